"""Critic of the Deep Photo Enhancer (WGAN 'discriminator'), faithful to the release."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpe_core.nn.config import CriticConfig
from dpe_core.nn.layers import SymmetricConv2d, symmetric_pad, variance_scaling_

# Soft CDF per channel: the share of pixels below each centre, smoothed over +-SOFT_WIDTH so that the statistic is
# a mean of per-pixel functions (its gradient spreads over the photo, unlike a quantile's single pixel).
SOFT_CENTRES = tuple(0.05 + 0.1 * i for i in range(10))
SOFT_WIDTH = 0.05
SOFT_FEATURES = 3 * len(SOFT_CENTRES) + 3 + 3 + 1
# Opponent axes, each mapped onto [0,1] for RGB in [0,1]: luminance (Rec. 601), red-green, yellow-blue. Marginals
# along these besides R, G, B see how the channels move together (a colour matrix, a fade toward a tint), which
# per-channel marginals cannot: the sliced view of the 3-D colour distribution.
OPPONENT_AXES = ((0.299, 0.587, 0.114, 0.0), (0.5, -0.5, 0.0, 0.5), (0.25, 0.25, -0.5, 0.5))
CROSS_FEATURES = len(OPPONENT_AXES) * len(SOFT_CENTRES) + 3


def soft_cdf(values: torch.Tensor) -> torch.Tensor:
    """values [B,K,N] -> [B,K,len(SOFT_CENTRES)]: the share of the N values below each centre, smoothed."""
    centres = values.new_tensor(SOFT_CENTRES)
    return torch.sigmoid((centres - values.unsqueeze(-1)) / SOFT_WIDTH).mean(dim=2)


def soft_colour_statistics(x: torch.Tensor, cross_channel: bool = False) -> torch.Tensor:
    """x [B,3,H,W] in [0,1] -> [B, SOFT_FEATURES] float32: per channel the soft CDF at SOFT_CENTRES, the mean and
    the standard deviation, and the mean over pixels of max - min over the channels (saturation).

    cross_channel adds CROSS_FEATURES: the soft CDFs along OPPONENT_AXES and the three channel correlations
    (RG, RB, GB) -> [B, SOFT_FEATURES + CROSS_FEATURES]."""
    flat = x.float().reshape(x.shape[0], 3, -1)
    spread = (flat.amax(dim=1) - flat.amin(dim=1)).mean(dim=1, keepdim=True)
    parts = [soft_cdf(flat).flatten(1), flat.mean(dim=2), flat.std(dim=2), spread]
    if cross_channel:
        axes = flat.new_tensor(OPPONENT_AXES)
        opponent = torch.einsum("kc,bcn->bkn", axes[:, :3], flat) + axes[:, 3, None]
        centred = flat - flat.mean(dim=2, keepdim=True)
        cov = torch.einsum("bcn,bdn->bcd", centred, centred) / flat.shape[2]
        scale = cov.diagonal(dim1=1, dim2=2).clamp_min(1e-8).sqrt()
        corr = cov / (scale.unsqueeze(2) * scale.unsqueeze(1))
        parts += [soft_cdf(opponent).flatten(1), corr[:, [0, 0, 1], [1, 2, 2]]]
    return torch.cat(parts, dim=1)


class Critic(nn.Module):
    """x [B,3,H,W] in [0,1] -> one score per image [B].

    conv3x3 ->16, then five conv5x5/2 ->32,64,128,128,128, each LeakyReLU(0.2) then affine InstanceNorm;
    a 16x16 VALID head conv ->1 and the spatial mean. ~1.12 M parameters. ``global_stats`` (opt-in) adds or
    substitutes an MLP score of soft_colour_statistics(x). Every conv starts from the release's
    fan-in variance scaling (``config.init_scale``, 1e-3 as released; truncated normal, zero bias).
    """

    def __init__(self, config: CriticConfig | None = None):
        super().__init__()
        self.config = config = config or CriticConfig()
        c = config.base_channels
        plan = [
            (3, c, 3, 1),
            (c, 2 * c, 5, 2),
            (2 * c, 4 * c, 5, 2),
            (4 * c, 8 * c, 5, 2),
            (8 * c, 8 * c, 5, 2),
            (8 * c, 8 * c, 5, 2),
        ]
        self.convs = nn.ModuleList(SymmetricConv2d(i, o, k, s) for i, o, k, s in plan)
        self.norms = nn.ModuleList(nn.InstanceNorm2d(o, affine=True) for _, o, _, _ in plan)
        self.head = SymmetricConv2d(8 * c, 1, config.head_size, valid=True)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                variance_scaling_(module, config.init_scale)
        self.stats = (
            nn.Sequential(nn.Linear(SOFT_FEATURES + (CROSS_FEATURES if config.cross_channel_stats else 0), 64),
                          nn.LeakyReLU(config.leaky_slope), nn.Linear(64, 1))
            if config.global_stats != "off" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"critic expects [B,3,H,W] RGB, got shape {tuple(x.shape)}")
        if self.stats is None:
            return self._conv_score(x)
        score = self.stats(soft_colour_statistics(x, self.config.cross_channel_stats)).squeeze(1).to(x.dtype)
        return score if self.config.global_stats == "only" else self._conv_score(x) + score

    def _conv_score(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(F.leaky_relu(conv(h), self.config.leaky_slope))
        k = self.config.head_size
        if h.shape[-2] < k or h.shape[-1] < k:
            # Deviation: inputs below 512 px leave a feature map smaller than the 16x16 head; pad it
            # symmetrically so small training crops still get a score (identity at 512).
            ph, pw = max(0, k - h.shape[-2]), max(0, k - h.shape[-1])
            h = symmetric_pad(h, (0, pw, 0, ph))
        return self.head(h).mean(dim=(1, 2, 3))
