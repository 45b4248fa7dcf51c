"""A documented family of global tone/colour degradations (DESIGN.md "Quality").

Each degradation is a smooth global function of the pixel values, applied at any resolution with a fixed
seed, so "enhance(degrade(photo)) vs photo" is a paired benchmark on real photos without expert retouching.
Parameters are drawn from ranges typical of under-exposed, flat, hazy, dull or colour-cast shots.
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
    """Draw one degradation of the kind that makes a photo need enhancement.

    The ranges are one-sided where real defects are: under-exposure (-1 to +0.3 stops), darker mid-tones
    (gamma 2^-0.15 to 2^0.5), flat contrast (0.6-1.05), dull colour (saturation 0.5-1.05), haze / washed-out
    blacks (lift 0-0.1); colour casts go both ways (red/blue gains 0.85-1.15). A family symmetric around the
    identity would make the correction unpredictable from the photo (as likely too bright as too dark).
    strength in [0,2] scales every parameter's distance from the identity.
    """
    s = strength

    def towards(low: float, high: float, neutral: float) -> float:
        return neutral + (rng.uniform(low, high) - neutral) * s

    return Degradation(
        exposure_stops=towards(-1.0, 0.3, 0.0),
        gamma=2.0 ** towards(-0.15, 0.5, 0.0),
        contrast=towards(0.6, 1.05, 1.0),
        saturation=towards(0.5, 1.05, 1.0),
        white_balance=(towards(0.85, 1.15, 1.0), 1.0, towards(0.85, 1.15, 1.0)),
        black_lift=towards(0.0, 0.1, 0.0),
    )


def benchmark_degradations(count: int, seed: int = 2018) -> list[Degradation]:
    """The fixed list of degradations used by benchmarks and held-out evaluation (deterministic in seed)."""
    rng = random.Random(seed)
    return [random_degradation(rng) for _ in range(count)]
