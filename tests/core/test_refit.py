"""Refitting a trained model's global colour affine with its U-Net frozen (dpe_core.training.refit)."""

from __future__ import annotations

import json

import pytest
import torch

from dpe_core.nn import GeneratorConfig, GlobalUNetGenerator, load_model
from dpe_core.nn.modelfile import ModelInfo, save_model
from dpe_core.training import DataConfig, TrainConfig
from dpe_core.training.loop import build_data, evaluate
from dpe_core.training.refit import choose, refit_head
from tests.core.test_training_data import _photo_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(folder, tmp_path) -> TrainConfig:
    return TrainConfig(mode="supervised", image_size=32, batch_size=4, seed=3, min_mse=1e-3,
                       checkpoint_url=str(tmp_path / "unused"),
                       data=DataConfig(degrade_url=str(folder), val_names=["p1.png"], exclude_names=["p5.png"],
                                       clean_share=0.2))


def test_refit_keeps_the_unet_scales_its_residual_and_improves_validation(tmp_path):
    (tmp_path / "photos").mkdir()
    folder = _photo_folder(tmp_path / "photos")
    torch.manual_seed(0)
    start = GlobalUNetGenerator(GeneratorConfig(train_size=32, global_affine=True, output_init_scale=1.0)).eval()
    save_model(start, str(tmp_path / "start"), ModelInfo(name="start", version="1",
                                                         training={"test_photos": ["p5.png"]}))
    config = _config(folder, tmp_path)
    data = build_data(config)
    before = evaluate(start, data.eval_pairs)

    chosen = refit_head(config, str(tmp_path / "start"), steps=60, out=tmp_path / "refit", residual_scale=0.5,
                          lr=3e-3, eval_every=20, average_from=40, min_noharm=0.0, name="default", version="9")
    rows = [json.loads(line) for line in (tmp_path / "refit" / "history.jsonl").read_text().splitlines()]
    assert [r.get("step") for r in rows] == [20, 40, 60, None] and rows[-1]["averaged"] == 2
    assert chosen == max(rows, key=lambda r: r["eval_psnr"])  # the rule, on the validation scores only

    refit, info = load_model(str(tmp_path / "refit" / "model"))
    assert (info.name, info.version) == ("default", "9")
    assert info.training["refit"]["residual_scale"] == 0.5 and info.training["refit"]["chosen"] == chosen
    assert info.training["test_photos"] == ["p5.png"]  # the base model's splits stay readable
    old, new = start.state_dict(), refit.state_dict()
    for key in old:
        if key.startswith("out2."):
            assert torch.allclose(new[key], old[key] * 0.5)  # the U-Net's residual, exactly halved
        elif not key.startswith("affine_mlp."):
            assert torch.equal(new[key], old[key]), key  # the rest of the U-Net untouched
    assert not torch.equal(new["affine_mlp.4.weight"], old["affine_mlp.4.weight"])  # the affine learned
    after = evaluate(refit, data.eval_pairs)
    assert after["eval_psnr"] == pytest.approx(chosen["eval_psnr"], abs=1e-4)
    assert after["eval_psnr"] > before["eval_psnr"] + 0.5, (before, after)


def test_choice_prefers_gentle_candidates_and_a_model_without_an_affine_is_refused(tmp_path):
    rows = [{"step": 1, "eval_psnr": 22.0, "eval_noharm_psnr": 27.0},
            {"step": 2, "eval_psnr": 21.5, "eval_noharm_psnr": 31.0},
            {"average_from": 1, "eval_psnr": 21.0, "eval_noharm_psnr": 33.0}]
    assert choose(rows, min_noharm=30.0)["step"] == 2
    assert choose(rows, min_noharm=40.0)["step"] == 1  # none gentle enough: the best of all
    save_model(GlobalUNetGenerator(GeneratorConfig(train_size=32)).eval(), str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="no global colour affine"):
        refit_head(_config(tmp_path, tmp_path), str(tmp_path / "plain"), steps=1, out=tmp_path / "out")
