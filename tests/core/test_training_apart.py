"""Training and scoring write checkpoints, models, packs and contact sheets; none of them may land on or among the
photos they read, under any name (a symlink, '//', a parent folder)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dpe_core.io.places import DestinationError
from dpe_core.quality.report import main as quality_main
from dpe_core.training import DataConfig, TrainConfig
from dpe_core.training.loop import export_model, train
from dpe_core.training.refit import refit_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in folder.rglob("*"))


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(40, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    (tmp_path / "alias").symlink_to(folder)
    return folder


def _config(photos, **update):
    return TrainConfig(mode="supervised", image_size=32, batch_size=2, steps=1, eval_every=1,
                       data=DataConfig(degrade_url=str(photos), val_names=["p3.png"]), **update)


def _near_the_photos(photos):
    tmp = photos.parent
    return [photos, photos / "checkpoints", tmp / "alias" / "run", f"{tmp}//photos/run", tmp]


def test_checkpoints_never_go_into_the_photo_folder(photos):
    before = _snapshot(photos)
    for where in _near_the_photos(photos):
        with pytest.raises(DestinationError, match=r"checkpoint folder .* the photo folder"):
            train(_config(photos, checkpoint_url=str(where)))
    assert _snapshot(photos) == before


def test_models_and_refits_never_go_into_the_photo_folder(photos, tmp_path):
    result = train(_config(photos, checkpoint_url=str(tmp_path / "checkpoints")))
    before = _snapshot(photos)
    for where in _near_the_photos(photos):
        with pytest.raises(DestinationError, match=r"model folder .* the photo folder"):
            export_model(result, str(where), "custom", "1")
        with pytest.raises(DestinationError, match=r"output folder .* the photo folder"):
            refit_head(_config(photos), "default", 1, where)
    assert _snapshot(photos) == before
    export_model(result, str(tmp_path / "model"), "custom", "1")  # apart from the photos: written
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_quality_sheets_never_go_into_the_photo_folder(photos, capsys):
    before = _snapshot(photos)
    for where in (photos, photos.parent / "alias" / "sheets"):
        assert quality_main(["--photos", str(photos), "--all-photos", "--family", "A", "--out", str(where)]) == 2
        assert "overlaps the photo folder" in capsys.readouterr().err
    assert _snapshot(photos) == before
