"""Classical enhancement baselines printed beside the model in every quality table.

All take and return HxWx3 float arrays in [0,1] (sRGB), any size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def identity(image: np.ndarray) -> np.ndarray:
    """No change: the floor every method must beat."""
    return image


def autocontrast(image: np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """Per-channel linear stretch between the cutoff and 100-cutoff percentiles (like PIL's autocontrast)."""
    lo = np.percentile(image, cutoff, axis=(0, 1), keepdims=True)
    hi = np.percentile(image, 100 - cutoff, axis=(0, 1), keepdims=True)
    return np.clip((image - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def histogram_equalisation(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of CIELAB lightness, colour (a*, b*) kept."""
    from skimage.color import lab2rgb, rgb2lab
    from skimage.exposure import equalize_hist

    lab = rgb2lab(image)
    lab[..., 0] = equalize_hist(lab[..., 0] / 100.0) * 100.0
    return np.clip(lab2rgb(lab), 0, 1)


def clahe(image: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image; works on HSV value for RGB)."""
    from skimage.exposure import equalize_adapthist

    return np.clip(equalize_adapthist(image, clip_limit=clip_limit), 0, 1)


def gray_world(image: np.ndarray) -> np.ndarray:
    """White balance assuming the average colour of the scene is gray."""
    means = image.reshape(-1, 3).mean(0)
    return np.clip(image * (means.mean() / np.maximum(means, 1e-6)), 0, 1)


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": identity,
    "autocontrast": autocontrast,
    "hist-eq": histogram_equalisation,
    "CLAHE": clahe,
    "gray-world": gray_world,
}
