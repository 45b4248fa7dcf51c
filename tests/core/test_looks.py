"""Known looks: deterministic, size-independent global retouches with the character their names promise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpe_core.quality.looks import LOOKS


def _photo(h=48, w=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy / h, xx / w, 0.5 * (yy / h + xx / w)], axis=-1) * 0.7 + 0.15
    return Image.fromarray((np.clip(base + rng.random((h, w, 3)) * 0.05, 0, 1) * 255).astype(np.uint8))


def _lab(image: Image.Image) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(image, dtype=np.float64) / 255.0)


@pytest.mark.parametrize("name", sorted(LOOKS))
def test_looks_are_deterministic_same_size_and_per_pixel(name):
    look = LOOKS[name]
    photo = _photo()
    out = look(photo)
    assert out.size == photo.size and out.mode == "RGB"
    assert np.array_equal(np.asarray(look(photo)), np.asarray(out))
    # Per-pixel: a crop of the output equals the output of the crop (no spatial filtering).
    box = (5, 7, 40, 30)
    assert np.array_equal(np.asarray(out.crop(box)), np.asarray(look(photo.crop(box))))
    assert not np.array_equal(np.asarray(out), np.asarray(photo))
    with pytest.raises(ValueError, match="RGB"):
        look(photo.convert("L"))


def test_warm_contrast_is_warmer_more_contrasted_and_more_colourful():
    photo = _photo()
    before, after = _lab(photo), _lab(LOOKS["warm-contrast"](photo))
    assert after[..., 2].mean() > before[..., 2].mean() + 2  # b*: towards yellow/amber
    assert after[..., 0].std() > before[..., 0].std()  # S-curve: more lightness contrast
    assert np.hypot(after[..., 1], after[..., 2]).mean() > np.hypot(before[..., 1], before[..., 2]).mean()


def test_cool_faded_is_cooler_flatter_and_lifts_blacks():
    photo = _photo()
    out = LOOKS["cool-faded"](photo)
    before, after = _lab(photo), _lab(out)
    assert after[..., 2].mean() < before[..., 2].mean() - 2  # b*: towards blue
    assert after[..., 0].std() < before[..., 0].std()
    pixels = np.asarray(out)
    assert pixels.min() >= 0.08 * 255 - 1 and pixels.max() <= 0.93 * 255 + 1
