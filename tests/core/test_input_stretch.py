"""GeneratorConfig.input_stretch: the U-Net reads the photo stretched to its range, the statistics read the original."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpe_core.inference import Enhancer
from dpe_core.nn import build_generator
from dpe_core.nn.generator import STAT_FEATURES, load_widened, model_statistics, stretch_input
from tests.core.generators import assert_folds_and_round_trips, randomised_generator


@pytest.fixture(scope="module")
def generator():
    return randomised_generator()


def _with_affine(generator):
    """generator widened with the colour affine, its MLP randomised (a v6-like model's stand-in)."""
    wide = build_generator(generator.config.model_copy(update={"global_affine": True}))
    load_widened(wide, generator.state_dict())
    torch.manual_seed(2)
    for p in wide.affine_mlp.parameters():
        p.data.normal_(0, 0.2)
    return wide.eval()


def _stretching(base, randomise_heads: bool):
    """base widened with input_stretch (the affine's new input columns start at zero), or with its whole affine
    randomised (a trained model's stand-in)."""
    wide = build_generator(base.config.model_copy(update={"global_affine": True, "input_stretch": True}))
    load_widened(wide, base.state_dict())
    if randomise_heads:
        torch.manual_seed(3)
        for p in wide.affine_mlp.parameters():
            p.data.normal_(0, 0.2)
    return wide.eval()


def _dull(photo: torch.Tensor) -> torch.Tensor:
    """A flat, dark, blue-cast copy: each channel squeezed into its own narrow band."""
    low = torch.tensor([0.10, 0.05, 0.20]).view(1, 3, 1, 1)
    return low + photo * torch.tensor([0.40, 0.30, 0.50]).view(1, 3, 1, 1)


def test_a_model_widened_with_the_stretch_runs_the_old_model_on_the_stretched_photo(generator):
    photo = torch.rand(2, 3, 64, 80)
    dull = _dull(photo)
    base = _with_affine(generator)
    wide = _stretching(base, randomise_heads=False)  # the fine-tuning start: the old model on the stretched photo
    with torch.inference_mode():
        stats = model_statistics(dull, stretch=True)
        stretched = stretch_input(dull, stats)
        assert (base(stretched) - base(dull)).abs().mean() > 1e-2  # the stretch matters to this model
        assert torch.allclose(wide(dull), base(stretched), atol=1e-5)
    # The stretch is autocontrast's: each channel of the dull copy comes back to nearly its full range.
    flat = stretched.reshape(2, 3, -1)
    assert float(flat.amin(dim=2).max()) < 0.01 and float(flat.amax(dim=2).min()) > 0.99
    assert stats.shape == (2, 2 * STAT_FEATURES + 6)


def test_the_heads_read_the_original_photo_so_a_dull_copy_is_told_apart(generator):
    # The U-Net sees nearly the same stretched photo for the original and its dull copy; only the statistics of
    # the original input can tell them apart, so with trained (here: random) heads the outputs must differ.
    photo = torch.rand(1, 3, 64, 80)
    photo[..., 0, 0], photo[..., 0, 1] = 0.0, 1.0
    wide = _stretching(generator, randomise_heads=True)
    with torch.inference_mode():
        assert torch.allclose(stretch_input(_dull(photo), model_statistics(_dull(photo), True)),
                              stretch_input(photo, model_statistics(photo, True)), atol=0.02)
        assert (wide(_dull(photo)) - wide(photo)).abs().mean() > 1e-3


def test_stretch_model_folds_round_trips_and_tiles_with_the_whole_photos_bounds(generator, tmp_path):
    wide = _stretching(generator, randomise_heads=True)
    assert_folds_and_round_trips(wide, _dull(torch.rand(2, 3, 64, 80)), tmp_path)
    x = np.random.default_rng(6).random((150, 230, 3)).astype(np.float32)
    x[:, :100] *= 0.3  # a dark left part: a tile's own bounds would differ from the photo's
    small = Enhancer(wide, device="cpu", tile_size=64, compile_apply="off").enhance(x, mode="tiled")
    whole = Enhancer(wide, device="cpu", tile_size=1024, compile_apply="off").enhance(x, mode="tiled")
    assert np.abs(small - whole).max() < 1e-4


def test_a_flat_grey_card_is_not_blown_up_and_bad_statistics_are_refused():
    grey = 0.5 + 0.002 * torch.rand(1, 3, 32, 32)
    stats = model_statistics(grey, stretch=True)
    out = stretch_input(grey, stats)
    assert float(out.amax() - out.amin()) <= 0.002 * 16 + 1e-4  # at most 16x the input's spread
    with pytest.raises(ValueError, match="stretch bounds"):
        stretch_input(grey, model_statistics(grey, stretch=False))


def test_refit_refuses_a_stretching_model(generator, tmp_path):
    from dpe_core.nn import save_model
    from dpe_core.training.config import TrainConfig
    from dpe_core.training.refit import refit_head

    save_model(_stretching(generator, randomise_heads=False), tmp_path / "m")
    with pytest.raises(ValueError, match="stretches its input"):
        refit_head(TrainConfig(), str(tmp_path / "m"), 10, tmp_path / "out")
