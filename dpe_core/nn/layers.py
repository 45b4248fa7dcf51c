"""Building blocks shared by the generator and the critic.

Paper-faithful details live here once: symmetric ('SYMMETRIC' in TF, numpy 'symmetric') padding,
the release's SELU constants, and individual batch norm (iBN).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The released code used these SELU constants, not torch's (1.6733, 1.0507).
SELU_ALPHA = 1.0198755295894968
SELU_SCALE = 1.0026538655307724


def selu(x: torch.Tensor) -> torch.Tensor:
    """SELU with the release's constants; any shape, any float dtype."""
    # ELU with alpha, scaled, is exactly SELU with these constants and uses one fused kernel.
    return SELU_SCALE * F.elu(x, alpha=SELU_ALPHA)


class ReleaseSELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return selu(x)


@lru_cache(maxsize=256)
def _symmetric_index(size: int, before: int, after: int) -> tuple[int, ...]:
    # numpy handles pads larger than the axis by repeating the mirrored pattern; we inherit that.
    return tuple(np.pad(np.arange(size), (before, after), mode="symmetric").tolist())


def _fast_symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor | None:
    h, w = x.shape[-2:]
    if pad > h or pad > w:
        return None
    x = torch.cat([x[..., :pad, :].flip(-2), x, x[..., h - pad :, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :pad].flip(-1), x, x[..., w - pad :].flip(-1)], dim=-1)


def symmetric_pad(x: torch.Tensor, pad: int | tuple[int, int, int, int]) -> torch.Tensor:
    """Pad [..., H, W] symmetrically: the edge pixel is repeated (numpy 'symmetric').

    ``pad`` is one int for all sides or (left, right, top, bottom) like ``F.pad``.
    PyTorch's 'reflect' mode does *not* repeat the edge pixel; the release used TF 'SYMMETRIC'.
    """
    if isinstance(pad, int):
        if pad == 0:
            return x
        fast = _fast_symmetric_pad(x, pad)
        if fast is not None:
            return fast
        pad = (pad, pad, pad, pad)
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    rows = torch.tensor(_symmetric_index(h, top, bottom), device=x.device)
    cols = torch.tensor(_symmetric_index(w, left, right), device=x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class SymmetricConv2d(nn.Conv2d):
    """Conv with explicit symmetric padding of (k-1)//2 followed by a VALID conv (as in the release).

    ``valid=True`` skips the padding (the release's 8x8 global conv and the critic's 16x16 head).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, valid: bool = False):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=0)
        self.symmetric_padding = 0 if valid else (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(symmetric_pad(x, self.symmetric_padding))


def variance_scaling_(conv: nn.Conv2d, scale: float = 1e-3) -> None:
    """Release init: fan-in variance scaling with a truncated normal (TF VarianceScaling), zero bias.

    With scale 1e-3 the residual generator starts close to the identity.
    """
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups
    # TF divides by the std of a unit normal truncated at +-2 so the *truncated* variance is scale/fan_in.
    std = math.sqrt(scale / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(conv.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class IndividualBatchNorm2d(nn.Module):
    """Individual batch norm (iBN): two complete BN parameter/statistic sets sharing nothing.

    Set 0 normalises real inputs, set 1 normalises generated inputs (the cycle pass of the two-way GAN).
    ``forward(x, domain)`` with x [B, C, H, W]. Defaults follow the release: decay 0.9 (momentum 0.1), eps 1e-5.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5, num_sets: int = 2):
        super().__init__()
        self.sets = nn.ModuleList(nn.BatchNorm2d(channels, eps=eps, momentum=momentum) for _ in range(num_sets))

    def forward(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        if not 0 <= domain < len(self.sets):
            raise ValueError(f"iBN domain must be in [0, {len(self.sets)}), got {domain}")
        return self.sets[domain](x)


class ConvSeluBN(nn.Module):
    """Release block: symmetric-padded conv -> SELU -> iBN. ``forward`` also returns the raw conv output."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bn_momentum: float = 0.1, bn_eps: float = 1e-5
    ):
        super().__init__()
        self.conv = SymmetricConv2d(in_ch, out_ch, kernel_size, stride)
        self.bn = IndividualBatchNorm2d(out_ch, bn_momentum, bn_eps)

    def forward(self, x: torch.Tensor, domain: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.conv(x)
        return self.bn(selu(raw), domain), raw


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling of x to like's spatial size (x2 exactly when sizes are even).

    Deviation from the release (which only ran at 512): at odd sizes the encoder rounds up, so
    nearest resizing to the skip's size replaces the fixed x2.
    """
    size = like.shape[-2:]
    if x.shape[-2] * 2 == size[0] and x.shape[-1] * 2 == size[1]:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.interpolate(x, size=size, mode="nearest")


def interp1d(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for torch: x any shape, xp non-decreasing [L], fp [L]; constant beyond both ends."""
    index = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    t = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)
