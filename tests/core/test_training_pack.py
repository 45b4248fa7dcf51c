"""Moving a training run to a lent machine: its photos packed at load size, its length fitted to the lease."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dpe_core.training import DataConfig, TrainConfig
from dpe_core.training.__main__ import fit_to_budget
from dpe_core.training.data import load_rgb
from dpe_core.training.loop import build_data
from dpe_core.training.pack import pack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(path, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([yy, xx, (yy + xx) / 2]) * 0.6 + 0.2 + 0.05 * torch.rand(3, h, w, generator=g)
    Image.fromarray((img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8")).save(path, quality=95)


@pytest.fixture()
def degrade_config(tmp_path):
    main, extra = tmp_path / "main", tmp_path / "extra"
    main.mkdir()
    extra.mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "c.png", "test.jpg", "d.png"]):
        _photo(main / name, 90 + 10 * i, 150 - 5 * i, i)
    _photo(extra / "x.jpg", 120, 80, 7)
    _photo(extra / "v.png", 70, 100, 8)
    return TrainConfig(mode="supervised", image_size=32, batch_size=2, data=DataConfig(
        degrade_url=str(main), val_names=["b.jpg"], exclude_names=["test.jpg"], load_size=64, eval_degradations=2,
        extra_train_urls=[str(extra / "x.jpg")], extra_val_urls=[str(extra / "v.png")]))


def test_packed_run_reads_the_same_photos_at_load_size_and_never_the_test_split(tmp_path, degrade_config):
    out = tmp_path / "packed"
    packed = pack(degrade_config, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["degrade/a.png", "degrade/b.jpg.png", "degrade/c.png", "degrade/d.png",
                     "extra_train/x.jpg.png", "extra_val/v.png"]  # test.jpg: not a byte of it travels
    assert json.loads((out / "train_config.json").read_text())["data"]["val_names"] == ["b.jpg.png"]
    assert len((out / "MANIFEST.tsv").read_text().splitlines()) == len(files)

    original, moved = build_data(degrade_config), build_data(packed)
    names = lambda urls: [u.rsplit("/", 1)[-1].removesuffix(".png").removesuffix(".jpg") for u in urls]  # noqa: E731
    assert names(moved.train_urls) == names(original.train_urls) == ["a", "c", "d", "x"]
    assert names(moved.holdout_urls) == names(original.holdout_urls) == ["b", "v"]
    pairs = zip(original.train_urls + original.holdout_urls, moved.train_urls + moved.holdout_urls, strict=True)
    for source, copy in pairs:
        want, got = load_rgb(source, 64), load_rgb(copy)
        assert got.shape == want.shape and max(got.shape[1:]) == 64  # already at load size: nothing to resize
        assert (got - want).abs().max() <= 0.5 / 255 + 1e-6  # one 8-bit rounding, nothing else

    elsewhere = pack(degrade_config, tmp_path / "again", root=".gpudata")
    assert elsewhere.data.degrade_url == ".gpudata/degrade"
    assert elsewhere.data.extra_train_urls == [".gpudata/extra_train/x.jpg.png"]


def test_pack_refuses_configs_it_cannot_move(tmp_path):
    paired = TrainConfig(mode="supervised", image_size=32, data=DataConfig(input_url="in", target_url="out"))
    with pytest.raises(ValueError, match="degrade_url"):
        pack(paired, tmp_path / "packed")


def test_pack_never_writes_where_the_photos_are(tmp_path, degrade_config):
    main = tmp_path / "main"
    before = sorted(p.name for p in main.iterdir())
    (tmp_path / "link").symlink_to(main)
    for out in (main, main / "packed", tmp_path, tmp_path / "link" / "packed", tmp_path / "extra" / "sub"):
        with pytest.raises(ValueError, match="the photo folder"):
            pack(degrade_config, out)
    assert sorted(p.name for p in main.iterdir()) == before  # not a file added or replaced
    assert not (tmp_path / "extra" / "sub").exists()


def test_time_budget_sets_whole_checkpoint_intervals_and_keeps_the_decay_share(degrade_config):
    config = degrade_config.model_copy(update={"steps": 400, "decay_start": 300, "checkpoint_every": 20,
                                              "eval_every": 20})
    data = build_data(config)
    tiny = fit_to_budget(config, data, seconds=1e-3, probe=12)
    assert tiny.steps == 20  # never less than one checkpoint interval: a run that saves nothing is lost
    long = fit_to_budget(config, data, seconds=1e5, probe=12)
    assert long.steps > 400 and long.steps % 20 == 0
    assert long.decay_start == int(long.steps * 0.75)
