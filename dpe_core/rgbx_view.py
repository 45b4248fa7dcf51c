"""RGBX pixel buffers (numpy and the standard library only, so the core path needs no image library).

dpe_core.io decodes 8-bit JPEGs into HxWx4 uint8 buffers and hands out their ``[..., :3]`` views; the Enhancer
writes 8-bit results the same way. Code that reads whole rows (area downscale) or hands pixels to Pillow uses the
4-byte layout directly instead of copying the strided view (``rgbx_base``).

``recycled_empty``: large photo buffers come from a small per-process free list of anonymous memory maps, returned
to it when the last array or view using one is gone. A fresh 96 MB numpy array (24 MP RGBX) costs the kernel's
zeroing of every page on first touch (measured: a third of the fused apply's time at 24 MP); Pillow's own
decoder, by contrast, reuses heap blocks. At most ``POOL_KEEP`` idle buffers are kept (and at most ``POOL_KEEP_BYTES``).
"""

from __future__ import annotations

import mmap
import threading

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
        elif isinstance(owner, _Region):
            low = owner.__array_interface__["data"][0]
            high = low + owner.__array_interface__["shape"][0]
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


POOL_MIN_BYTES = 8 << 20  # smaller arrays: plain np.empty (malloc reuses its heap for them)
POOL_KEEP = 3  # idle buffers kept per process ...
POOL_KEEP_BYTES = 768 << 20  # ... and at most this many bytes of them


class _Region:
    """Owner of one recycled memory map while arrays use it (numpy keeps it as their base); back to the pool after."""

    def __init__(self, backing: np.ndarray, nbytes: int):
        self._backing = backing
        self.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "version": 3,
                                    "data": (backing.ctypes.data, False)}

    def __del__(self):
        _release(self._backing)


_FREE: list[np.ndarray] = []
_FREE_LOCK = threading.Lock()


def _release(backing: np.ndarray) -> None:
    with _FREE_LOCK:
        _FREE.append(backing)
        _FREE.sort(key=lambda b: b.nbytes)
        while _FREE and (len(_FREE) > POOL_KEEP or sum(b.nbytes for b in _FREE) > POOL_KEEP_BYTES):
            _FREE.pop(0)  # the smallest idle one goes (unmapped when its array is collected)


def recycled_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised C-order uint8 array of ``shape``; large ones reuse memory of earlier, released arrays."""
    nbytes = int(np.prod(shape))
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype=np.uint8)
    with _FREE_LOCK:
        fit = next((i for i, b in enumerate(_FREE) if nbytes <= b.nbytes <= 2 * nbytes), None)
        backing = _FREE.pop(fit) if fit is not None else None
    if backing is None:
        backing = np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)
    return np.asarray(_Region(backing, nbytes)).reshape(shape)


__all__ = ["recycled_empty", "rgbx_base"]
