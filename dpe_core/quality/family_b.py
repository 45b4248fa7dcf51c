"""Family B: a second, independently parameterised family of global defects, never used for training.

Written before the default model was trained, to measure how much a model only undoes its own training family
(family A, ``degradations.py``). It differs from A on purpose in space, parameterisation, ranges and order:

1. decode sRGB to linear light (the IEC 61966-2-1 curve, not a power law);
2. exposure in EV, drawn from a normal law (sigma 0.75 EV, cut at +-1.8) and applied in linear light with a
   hard sensor clip (no roll-off);
3. white balance as a von Kries scaling in linear light: warm/cool on the red-blue axis (2^(+-k), k up to 0.3)
   and green/magenta (2^(+-m), m up to 0.12), renormalised so that the luminance of grey is kept;
4. encode back to sRGB;
5. a tone curve mixing the identity with a logistic S-curve (amount -0.6..0.7: negative flattens, positive
   hardens contrast), pivoting at the photo's own mean (not at mid-grey);
6. chroma scaling in YCbCr (2^-1..2^0.6: dull to garish);
7. fade: output range squeezed to [lo, hi] with lo 0..0.12 (lifted blacks) and hi 0.88..1 (greyed whites).
Each step is present with probability 0.6 (at least two per draw), so B mixes defects more often than A.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch


def srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0,1] -> linear light in [0,1] (IEC 61966-2-1)."""
    return torch.where(v <= 0.04045, v / 12.92, ((v.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: torch.Tensor) -> torch.Tensor:
    """Linear light in [0,1] -> sRGB-encoded values in [0,1]."""
    v = v.clamp(0, 1)
    return torch.where(v <= 0.0031308, v * 12.92, 1.055 * v.clamp(min=1e-12) ** (1 / 2.4) - 0.055)


def _ycbcr(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = v[..., 0:1, :, :], v[..., 1:2, :, :], v[..., 2:3, :, :]
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return y, (b - y) / 1.8556, (r - y) / 1.5748


def _rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    r = y + 1.5748 * cr
    b = y + 1.8556 * cb
    g = (y - 0.2126 * r - 0.0722 * b) / 0.7152
    return torch.cat([r, g, b], dim=-3)


@dataclass(frozen=True)
class LinearLightDefect:
    """One family-B defect (see the module docstring for the order). The default instance is the identity."""

    ev: float = 0.0
    warm: float = 0.0  # red/blue axis exponent: > 0 warm, < 0 cool
    green: float = 0.0  # green/magenta exponent: > 0 green cast
    s_curve: float = 0.0  # > 0 harder contrast, < 0 flatter
    chroma_log2: float = 0.0
    fade_low: float = 0.0
    fade_high: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """image [..., 3, H, W] RGB in [0,1] -> defective image, same shape, in [0,1]."""
        lin = srgb_to_linear(image.clamp(0, 1))
        gains = torch.tensor([2.0**self.warm, 2.0**self.green, 2.0**-self.warm], dtype=image.dtype,
                             device=image.device)
        gains = gains / (0.2126 * gains[0] + 0.7152 * gains[1] + 0.0722 * gains[2])
        lin = (lin * gains.view(3, 1, 1) * 2.0**self.ev).clamp(0, 1)
        v = linear_to_srgb(lin)
        if self.s_curve:
            pivot = v.mean(dim=(-3, -2, -1), keepdim=True).clamp(0.2, 0.8)
            k = 6.0
            sig = torch.sigmoid(k * (v - pivot))
            lo, hi = torch.sigmoid(k * (0 - pivot)), torch.sigmoid(k * (1 - pivot))
            curve = (sig - lo) / (hi - lo)
            v = (v + self.s_curve * (curve - v)).clamp(0, 1)
        if self.chroma_log2:
            y, cb, cr = _ycbcr(v)
            scale = 2.0**self.chroma_log2
            v = _rgb(y, cb * scale, cr * scale).clamp(0, 1)
        v = self.fade_low + (self.fade_high - self.fade_low) * v
        return v.clamp(0, 1)


def random_defect_b(rng: random.Random) -> LinearLightDefect:
    """Draw one family-B defect (always damaged; ranges in the module docstring)."""
    steps = ("ev", "wb", "curve", "chroma", "fade")
    active = {s for s in steps if rng.random() < 0.6}
    while len(active) < 2:
        active.add(rng.choice(steps))
    ev = max(-1.8, min(1.8, rng.gauss(0.0, 0.75))) if "ev" in active else 0.0
    if "ev" in active and abs(ev) < 0.25:
        ev = math.copysign(0.25, ev or 1.0)
    return LinearLightDefect(
        ev=ev,
        warm=rng.uniform(-0.3, 0.3) if "wb" in active else 0.0,
        green=rng.uniform(-0.12, 0.12) if "wb" in active else 0.0,
        s_curve=rng.uniform(-0.6, 0.7) if "curve" in active else 0.0,
        chroma_log2=rng.uniform(-1.0, 0.6) if "chroma" in active else 0.0,
        fade_low=rng.uniform(0.0, 0.12) if "fade" in active else 0.0,
        fade_high=rng.uniform(0.88, 1.0) if "fade" in active else 1.0,
    )


def benchmark_defects_b(count: int, seed: int = 2019) -> list[LinearLightDefect]:
    """The fixed list of family-B defects used by benchmarks (deterministic in seed)."""
    rng = random.Random(seed)
    return [random_defect_b(rng) for _ in range(count)]
