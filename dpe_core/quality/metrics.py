"""Image quality metrics on [0,1] RGB tensors/arrays: PSNR (torch), SSIM and CIEDE2000 (scikit-image)."""

from __future__ import annotations

import numpy as np
import torch


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB between images in [0,1] ([...,3,H,W]); both clipped to [0,1]; optional valid mask [...,1,H,W]."""
    a, b = a.clamp(0, 1).double(), b.clamp(0, 1).double()
    sq = (a - b) ** 2
    mse = (sq * mask).sum() / (mask.sum() * a.shape[-3]) if mask is not None else sq.mean()
    return float(10 * torch.log10(1.0 / mse.clamp(min=1e-12)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two HxWx3 float images in [0,1] (scikit-image, channel_axis=-1)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))


def ciede2000(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference of two HxWx3 sRGB float images in [0,1] (lower is better)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(np.mean(deltaE_ciede2000(rgb2lab(a), rgb2lab(b))))
