"""Known looks: documented, deterministic global retouches used as measurable styles (issue: style retraining).

A look L turns a photo into "the photo as a retoucher with that taste would deliver it". Applying L to some
photos makes reference sets with a known answer: a style model trained unpaired on source photos -> L(references)
can be scored on held-out photos t by how close G(t) comes to L(t).

``LOOKS[name]`` is a function ``PIL.Image.Image (RGB) -> PIL.Image.Image (RGB)`` of the same size; every look is a
pure per-pixel function of the colour (no spatial filtering), so it is the same at any resolution.

- ``warm-contrast``: a warm, punchy print look: white balance shifted towards amber (red x1.06, blue x0.90 in
  linear light), a symmetric S-curve on luminance (strength 0.35 around mid-grey), chroma x1.2 with a soft limit
  so that saturated colours do not clip.
- ``cool-faded``: a cool, matte film look: blue x1.08 / red x0.94 in linear light, blacks lifted to 0.08 and
  whites lowered to 0.93 (a faded print), chroma x0.75.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from dpe_core.quality.family_b import linear_to_srgb, srgb_to_linear

Look = Callable[[Image.Image], Image.Image]


def _to_array(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        raise ValueError(f"looks take RGB images, got mode {image.mode!r}")
    return np.asarray(image, dtype=np.float32) / 255.0


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(values, 0, 1) * 255.0 + 0.5).astype(np.uint8), "RGB")


def _white_balance(v: np.ndarray, red: float, blue: float) -> np.ndarray:
    import torch

    lin = srgb_to_linear(torch.from_numpy(v)).numpy()
    lin = lin * np.array([red, 1.0, blue], dtype=np.float32)
    return linear_to_srgb(torch.from_numpy(np.clip(lin, 0, 1))).numpy()


def _luma(v: np.ndarray) -> np.ndarray:
    return (0.2126 * v[..., 0] + 0.7152 * v[..., 1] + 0.0722 * v[..., 2])[..., None]


def _scale_chroma(v: np.ndarray, factor: float, soft_limit: bool) -> np.ndarray:
    y = _luma(v)
    chroma = v - y
    if soft_limit:  # keep saturated colours inside the gamut: compress the chroma that would clip
        room = np.minimum(np.where(chroma > 0, 1 - y, y), 1.0) + 1e-6
        scaled = chroma * factor
        chroma = np.sign(scaled) * room * np.tanh(np.abs(scaled) / room)
    else:
        chroma = chroma * factor
    return y + chroma


def warm_contrast(image: Image.Image) -> Image.Image:
    """The warm, punchy look (see the module docstring)."""
    v = _white_balance(_to_array(image), red=1.06, blue=0.90)
    y = _luma(v)
    curve = y + 0.35 * (0.5 - 0.5 * np.cos(np.pi * y) - y) * 2.0  # S-curve through 0, 0.5 and 1
    v = v + (np.clip(curve, 0, 1) - y)
    return _to_image(_scale_chroma(np.clip(v, 0, 1), 1.2, soft_limit=True))


def cool_faded(image: Image.Image) -> Image.Image:
    """The cool, matte look (see the module docstring)."""
    v = _white_balance(_to_array(image), red=0.94, blue=1.08)
    v = _scale_chroma(v, 0.75, soft_limit=False)
    return _to_image(0.08 + (0.93 - 0.08) * np.clip(v, 0, 1))


LOOKS: dict[str, Look] = {"warm-contrast": warm_contrast, "cool-faded": cool_faded}
