"""Recognise the RGB view of an RGBX buffer (numpy only, so the core path needs no image library).

dpe_core.io decodes 8-bit JPEGs into HxWx4 uint8 buffers and hands out their ``[..., :3]`` views; the Enhancer
writes 8-bit results the same way. Code that reads whole rows (area downscale) or hands pixels to Pillow uses the
4-byte layout directly instead of copying the strided view.
"""

from __future__ import annotations

import numpy as np

try:  # numpy >= 2
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # pragma: no cover
    _byte_bounds = np.byte_bounds


def rgbx_base(rgb: np.ndarray) -> np.ndarray | None:
    """The HxWx4 uint8 array whose ``[..., :3]`` view ``rgb`` is (same memory, C order), or None.

    ``rgb`` must have the strides of such a view, (4W, 4, 1), and the memory it belongs to (the owning array or
    buffer) must extend over the 4th byte of its last pixel."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    h, w = rgb.shape[:2]
    if h == 0 or w == 0 or rgb.strides != (4 * w, 4, 1):
        return None
    owner = rgb
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    try:
        if isinstance(owner, np.ndarray):
            low, high = _byte_bounds(owner)
        else:  # a buffer (bytearray, mmap, pickle out-of-band buffer): its extent
            view = memoryview(owner)
            low = np.frombuffer(view, dtype=np.uint8).ctypes.data if view.nbytes else 0
            high = low + view.nbytes
    except (TypeError, ValueError, BufferError, AttributeError):
        return None
    start = rgb.ctypes.data
    if start < low or start + 4 * h * w > high:
        return None
    return np.lib.stride_tricks.as_strided(rgb, shape=(h, w, 4), strides=(4 * w, 4, 1), writeable=rgb.flags.writeable)


__all__ = ["rgbx_base"]
