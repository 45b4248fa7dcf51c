"""The kinds of image the Enhancer accepts, and the way back to each: numpy, PIL, torch, Photo (see inference.py).

A Job carries one image's full-resolution pixels (a PixelSource) and ``finish``, which turns the enhanced pixels
in the source's storage (numpy HxWx3 of its dtype, or a torch [3,H,W] float32) back into the caller's kind: gray
comes back as luma, alpha is reattached bit-exactly, PIL images keep their mode and info.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dpe_core.guided import PixelSource, resize_plane


@dataclass
class Job:
    """One image on its way through the Enhancer."""

    src: PixelSource
    finish: Callable[[Any], Any]  # storage result (numpy/tensor, or None for tensors) -> the caller's kind
    low: torch.Tensor | None = None  # [3,h,w] in [0,1] at the working size
    net_out: torch.Tensor | None = None  # [3,h,w] net output (unclipped)
    global_vector: torch.Tensor | None = None  # [128,1,1] (tiled)
    global_stats: torch.Tensor | None = None  # [STAT_FEATURES] input statistics of the working copy (tiled)
    post_stats: torch.Tensor | None = None  # [STAT_FEATURES] pre-curve output statistics of the working copy (tiled)


def to_storage(values: torch.Tensor, like: PixelSource) -> Any:
    """[3,h,w] float in [0,1] (unclipped) -> the source's storage at that size (numpy HxWx3 / tensor [3,h,w])."""
    v = values.float().clamp(0, 1)
    if isinstance(like.data, torch.Tensor):
        return v.to(like.data.device)
    hwc = v.permute(1, 2, 0)
    if like.is_integer:
        top = like.max_value
        ints = (hwc * top + 0.5).floor_().clamp_(0, top).to(torch.int32).cpu().numpy()
        return ints.astype(like.data.dtype)
    return hwc.cpu().numpy().astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of HxWx3, same dtype as given (rounded for integers)."""
    y = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if np.issubdtype(rgb.dtype, np.integer):
        return np.clip(np.rint(y), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)
    return y.astype(rgb.dtype)


def _reattach_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if alpha.shape[:2] != rgb.shape[:2]:
        alpha = resize_plane(alpha, rgb.shape[:2])
    return np.concatenate([rgb, alpha[:, :, None].astype(rgb.dtype, copy=False)], axis=2)


def array_job(array: np.ndarray) -> Job:
    """numpy HxW / HxWx3 / HxWx4 (uint8, uint16, float32, float64)."""
    if array.ndim == 2:
        gray = array
        return Job(PixelSource(np.repeat(gray[:, :, None], 3, axis=2)), lambda out: _luma(out).astype(gray.dtype))
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ValueError(f"pixels must be uint8, uint16, float32 or float64, got {array.dtype}")
    dtype = array.dtype
    if array.shape[2] == 4:
        alpha = array[:, :, 3].copy()
        rgb = np.ascontiguousarray(array[:, :, :3])
        return Job(PixelSource(rgb), lambda out: _reattach_alpha(out.astype(dtype, copy=False), alpha))
    return Job(PixelSource(array), lambda out: out.astype(dtype, copy=False))


def pil_job(image: Any) -> Job:
    """PIL image: RGB(A), L(A), 16-bit gray (I;16) keep their mode; other modes come back as RGB(A)."""
    from PIL import Image

    info = dict(image.info)
    mode = image.mode

    def wrap(array: np.ndarray, out_mode: str) -> Image.Image:
        out = Image.fromarray(array, out_mode) if out_mode != "I;16" else Image.fromarray(array)
        out.info.update(info)
        return out

    if mode in ("RGB", "RGBA"):
        job = array_job(np.asarray(image))
        return Job(job.src, lambda out: wrap(job.finish(out), mode))
    if mode in ("L", "LA"):
        array = np.asarray(image)
        gray = array if mode == "L" else array[:, :, 0]
        alpha = None if mode == "L" else array[:, :, 1].copy()

        def finish_gray(out: np.ndarray) -> Image.Image:
            y = _luma(out)
            if alpha is None:
                return wrap(y, "L")
            a = alpha if alpha.shape == y.shape else resize_plane(alpha, y.shape)
            return wrap(np.stack([y, a], axis=2), "LA")

        return Job(PixelSource(np.repeat(gray[:, :, None], 3, axis=2)), finish_gray)
    if mode.startswith("I;16"):
        gray = np.asarray(image).astype(np.uint16)
        return Job(PixelSource(np.repeat(gray[:, :, None], 3, axis=2)), lambda out: wrap(_luma(out), "I;16"))
    has_alpha = "A" in mode or "transparency" in info
    target = "RGBA" if has_alpha else "RGB"
    info.pop("transparency", None)
    job = array_job(np.asarray(image.convert(target)))
    return Job(job.src, lambda out: wrap(job.finish(out), target))


def tensor_job(tensor: torch.Tensor) -> Job:
    """torch [3,H,W] float in [0,1] (any device) -> [3,H,W] float32 on the same device."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a [3,H,W] or [B,3,H,W] tensor, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"tensors must be float in [0,1], got {tensor.dtype}")
    dtype = tensor.dtype
    return Job(PixelSource(tensor.detach()), lambda out: out.to(dtype))


__all__ = ["Job", "array_job", "pil_job", "tensor_job", "to_storage"]
