"""A documented family of global tone/colour degradations (DESIGN.md "Quality").

Each degradation is a smooth global function of the pixel values, applied at any resolution with a fixed
seed, so "enhance(degrade(photo)) vs photo" is a paired benchmark on real photos without expert retouching.
Parameters are drawn from ranges typical of badly exposed / badly white-balanced phone and camera shots.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Degradation:
    """Parameters of one degradation; apply order: white balance, exposure, black lift, gamma, contrast, saturation."""

    exposure_stops: float = 0.0  # multiply linear-ish values by 2**stops
    gamma: float = 1.0  # v ** gamma
    contrast: float = 1.0  # 0.5 + (v - 0.5) * contrast
    saturation: float = 1.0  # luma + (v - luma) * saturation
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gains
    black_lift: float = 0.0  # v * (1 - lift) + lift

    def as_dict(self) -> dict:
        return asdict(self)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """image [..., 3, H, W] RGB in [0,1] -> degraded image, same shape, clipped to [0,1]."""
        gains = torch.tensor(self.white_balance, dtype=image.dtype, device=image.device).view(3, 1, 1)
        v = image * gains * (2.0**self.exposure_stops)
        v = v.clamp(0, 1)
        v = v * (1 - self.black_lift) + self.black_lift
        v = v.clamp(min=1e-6) ** self.gamma
        v = 0.5 + (v - 0.5) * self.contrast
        luma = 0.299 * v[..., 0:1, :, :] + 0.587 * v[..., 1:2, :, :] + 0.114 * v[..., 2:3, :, :]
        v = luma + (v - luma) * self.saturation
        return v.clamp(0, 1)


def random_degradation(rng: random.Random, strength: float = 1.0) -> Degradation:
    """Draw one degradation; strength in [0,1] scales every parameter's distance from the identity."""
    s = strength

    def around(center: float, spread: float) -> float:
        return center + rng.uniform(-spread, spread) * s

    wb_r, wb_b = around(1.0, 0.15), around(1.0, 0.15)
    return Degradation(
        exposure_stops=around(0.0, 0.8),
        gamma=2.0 ** around(0.0, 0.45),
        contrast=around(1.0, 0.3),
        saturation=around(1.0, 0.4),
        white_balance=(wb_r, 1.0, wb_b),
        black_lift=max(0.0, rng.uniform(-0.05, 0.08) * s),
    )


def benchmark_degradations(count: int, seed: int = 2018) -> list[Degradation]:
    """The fixed list of degradations used by benchmarks and held-out evaluation (deterministic in seed)."""
    rng = random.Random(seed)
    return [random_degradation(rng) for _ in range(count)]
