"""Recognise the RGB view of an RGBX buffer (numpy only, so the core path needs no image library).

dpe_core.io decodes 8-bit JPEGs into HxWx4 uint8 buffers and hands out their ``[..., :3]`` views; the Enhancer
writes 8-bit results the same way. Code that reads whole rows (area downscale) or hands pixels to Pillow uses the
4-byte layout directly instead of copying the strided view.
"""

from __future__ import annotations

import numpy as np


def rgbx_base(rgb: np.ndarray) -> np.ndarray | None:
    """The HxWx4 uint8 buffer whose ``[..., :3]`` view ``rgb`` is (C-contiguous, same memory), or None."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    h, w = rgb.shape[:2]
    if rgb.strides != (4 * w, 4, 1):
        return None
    base = rgb.base
    while isinstance(base, np.ndarray):
        if base.shape == (h, w, 4) and base.flags.c_contiguous and base.ctypes.data == rgb.ctypes.data:
            return base
        base = base.base
    return None


__all__ = ["rgbx_base"]
