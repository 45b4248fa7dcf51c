"""Critic of the Deep Photo Enhancer (WGAN 'discriminator'), faithful to the release."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpe_core.nn.config import CriticConfig
from dpe_core.nn.layers import SymmetricConv2d, symmetric_pad, variance_scaling_


class Critic(nn.Module):
    """x [B,3,H,W] in [0,1] -> one score per image [B].

    conv3x3 ->16, then five conv5x5/2 ->32,64,128,128,128, each LeakyReLU(0.2) then affine InstanceNorm;
    a 16x16 VALID head conv ->1 and the spatial mean. ~1.12 M parameters. Every conv starts from the release's
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"critic expects [B,3,H,W] RGB, got shape {tuple(x.shape)}")
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
