"""The output tone curve (GeneratorConfig.post_curve_knots) and its refit on a frozen model."""

from __future__ import annotations

import pytest
import torch

from dpe_core.nn import GeneratorConfig, GlobalUNetGenerator, build_generator, load_model
from dpe_core.nn.generator import apply_post_curve, input_statistics, load_widened
from dpe_core.nn.modelfile import ModelInfo, save_model
from dpe_core.training.loop import build_data, evaluate
from dpe_core.training.refit import refit_head
from tests.core.test_refit import _config
from tests.core.test_training_data import _photo_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_widened_model_starts_as_the_saved_one_and_a_curve_can_undo_a_gamma():
    torch.manual_seed(1)
    plain = GlobalUNetGenerator(GeneratorConfig(train_size=32, global_affine=True, output_init_scale=1.0)).eval()
    wide = build_generator(plain.config.model_copy(update={"post_curve_knots": 33})).eval()
    load_widened(wide, plain.state_dict())
    photo = torch.rand(2, 3, 40, 48)
    with torch.inference_mode():
        assert torch.equal(wide(photo), plain(photo))  # zero curve: the saved model's function

    # Knots set by hand to v**(1/2.2) - v on every channel: the curve brightens mid-tones as a gamma would,
    # to within the piecewise-linear error of 33 knots.
    grid = torch.linspace(0, 1, 33)
    with torch.no_grad():
        last = wide.post_curve[-1]
        last.weight.zero_()
        last.bias.copy_((grid ** (1 / 2.2) - grid).repeat(3))
    ramp = torch.linspace(0.05, 1, 64).expand(1, 3, 8, 64).contiguous()
    stats = input_statistics(ramp)
    out = apply_post_curve(wide.post_curve, ramp, stats)
    assert torch.allclose(out, ramp ** (1 / 2.2), atol=4e-3)
    assert out[0, :, 0, 10].mean() > ramp[0, :, 0, 10].mean() + 0.1
    with pytest.raises(ValueError, match="at least 2"):
        build_generator(GeneratorConfig(train_size=32, post_curve_knots=1))


def test_refit_of_a_post_curve_leaves_the_model_frozen_and_improves_validation(tmp_path):
    (tmp_path / "photos").mkdir()
    folder = _photo_folder(tmp_path / "photos")
    torch.manual_seed(0)
    start = GlobalUNetGenerator(GeneratorConfig(train_size=32, global_affine=True, output_init_scale=1.0)).eval()
    save_model(start, str(tmp_path / "start"), ModelInfo(name="start", version="1"))
    config = _config(folder, tmp_path)
    data = build_data(config)
    before = evaluate(start, data.eval_pairs)

    chosen = refit_head(config, str(tmp_path / "start"), steps=60, out=tmp_path / "refit", lr=3e-3,
                          eval_every=20, min_noharm=0.0, head="post_curve", knots=9)
    refit, info = load_model(str(tmp_path / "refit" / "model"))
    assert refit.config.post_curve_knots == 9 and info.training["refit"]["head"] == "post_curve"
    old, new = start.state_dict(), refit.state_dict()
    for key in old:
        assert torch.equal(new[key], old[key]), key  # U-Net, BN statistics and affine untouched
    assert any(k.startswith("post_curve.") for k in new)
    after = evaluate(refit, data.eval_pairs)
    assert after["eval_psnr"] == pytest.approx(chosen["eval_psnr"], abs=1e-4)
    assert after["eval_psnr"] > before["eval_psnr"] + 0.5, (before, after)
