"""Family A: the documented family of global tone/colour defects the default model is trained on.

Each degradation is a smooth global function of the pixel values (display-referred sRGB in [0,1]), applied at
any resolution with a fixed seed, so "enhance(degrade(photo)) vs photo" is a paired benchmark on real photos
without expert retouching (DESIGN.md "Quality"). Family B (``family_b.py``) is an independently written second
family that no model is trained on: the gap between the two is how much a model overfits its own family.

Why the ranges (``random_degradation``): real defects go both ways, so every parameter spans both sides of the
identity where real photos do, and a share of draws is the identity itself (an undamaged photo whose best
output is itself), so that a model learns to leave good photos alone.
- exposure -1.5..+1.2 stops: a phone's metering error on back-lit or dark scenes is about 1-1.5 stops; over-
  exposure beyond ~1.2 stops clips so much that nothing can be recovered. Over-exposure rolls highlights off
  with a soft shoulder (as camera tone curves do) and then clips.
- gamma 2^-0.5..2^0.5: mid-tones too bright (lifted shadows) or too dark (a crushed tone curve).
- contrast 0.6..1.45 around mid-grey: flat (haze, cheap lenses, scanned prints) and harsh (phone "vivid").
- saturation 0.5..1.6: dull (overcast, faded) and garish (over-processed).
- white balance as temperature (-0.25..0.25, red/blue gains 1 +- t) and tint (-0.12..0.12, green against
  magenta): casts of any hue, as from tungsten, shade, fluorescent light or a wrong preset.
- black level -0.04..0.15: lifted, hazy blacks (positive) or crushed shadows (negative, clipped).
Each defect is present with probability 0.5 (at least one per damaged draw), so single defects and
combinations are both common; ``clean_share`` (default 0.2) of all draws are undamaged.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

#: Share of training draws that are undamaged (target = input): teaches "leave good photos alone".
CLEAN_SHARE = 0.2


def luma(v: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of [...,3,H,W] -> [...,1,H,W]."""
    return 0.299 * v[..., 0:1, :, :] + 0.587 * v[..., 1:2, :, :] + 0.114 * v[..., 2:3, :, :]


def _shoulder(v: torch.Tensor, knee: float = 0.8) -> torch.Tensor:
    """Soft highlight roll-off: identity below the knee, tanh compression of what lies above (then clip)."""
    over = (v - knee).clamp(min=0)
    return torch.where(v > knee, knee + (1 - knee) * torch.tanh(over / (1 - knee)), v)


@dataclass(frozen=True)
class Degradation:
    """Parameters of one family-A degradation; order: white balance, exposure (with highlight roll-off),
    black level, gamma, contrast, saturation. The default instance is the identity."""

    exposure_stops: float = 0.0  # multiply values by 2**stops; > 0 rolls highlights off, then clips
    gamma: float = 1.0  # v ** gamma
    contrast: float = 1.0  # 0.5 + (v - 0.5) * contrast
    saturation: float = 1.0  # luma + (v - luma) * saturation
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gains (temperature and tint)
    black_lift: float = 0.0  # v * (1 - lift) + lift; negative crushes shadows

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        return self == Degradation()

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """image [..., 3, H, W] RGB in [0,1] -> degraded image, same shape, clipped to [0,1]."""
        if self.is_identity:
            return image.clone()
        gains = torch.tensor(self.white_balance, dtype=image.dtype, device=image.device).view(3, 1, 1)
        v = image * gains * (2.0**self.exposure_stops)
        if self.exposure_stops > 0:
            v = _shoulder(v)
        v = v.clamp(0, 1)
        v = (v * (1 - self.black_lift) + self.black_lift).clamp(0, 1)
        v = v.clamp(min=1e-6) ** self.gamma
        v = 0.5 + (v - 0.5) * self.contrast
        y = luma(v)
        v = y + (v - y) * self.saturation
        return v.clamp(0, 1)


def random_degradation(rng: random.Random, strength: float = 1.0, clean_share: float = 0.0) -> Degradation:
    """Draw one family-A degradation (ranges and reasons in the module docstring).

    strength in [0,2] scales every parameter's distance from the identity; clean_share in [0,1] is the
    probability of returning the identity (an undamaged photo).
    """
    if clean_share > 0 and rng.random() < clean_share:
        return Degradation()
    s = strength
    names = ("exposure", "gamma", "contrast", "saturation", "white_balance", "black")
    active = {n for n in names if rng.random() < 0.5} or {rng.choice(names)}

    def draw(name: str, low: float, high: float, neutral: float) -> float:
        return neutral + (rng.uniform(low, high) - neutral) * s if name in active else neutral

    temperature = draw("white_balance", -0.25, 0.25, 0.0)
    tint = draw("white_balance", -0.12, 0.12, 0.0)
    return Degradation(
        exposure_stops=draw("exposure", -1.5, 1.2, 0.0),
        gamma=2.0 ** draw("gamma", -0.5, 0.5, 0.0),
        contrast=draw("contrast", 0.6, 1.45, 1.0),
        saturation=draw("saturation", 0.5, 1.6, 1.0),
        white_balance=(1.0 + temperature + tint / 2, 1.0 - tint, 1.0 - temperature + tint / 2),
        black_lift=draw("black", -0.04, 0.15, 0.0),
    )


#: One family-A defect at a time, each about two thirds of the way to the end of its range, in both directions
#: where the family goes both ways: which defects a model corrects and which it leaves or adds (`dpe quality
#: --per-defect`). A mixed draw hides this; a model can gain on average while it cannot undo one stop of exposure.
SINGLE_DEFECTS: dict[str, Degradation] = {
    "exposure -1 stop": Degradation(exposure_stops=-1.0),
    "exposure +0.8 stop": Degradation(exposure_stops=0.8),
    "gamma 1.4 (dark mid-tones)": Degradation(gamma=1.4),
    "gamma 0.7 (light mid-tones)": Degradation(gamma=0.7),
    "contrast 0.7 (flat)": Degradation(contrast=0.7),
    "contrast 1.3 (harsh)": Degradation(contrast=1.3),
    "saturation 0.6 (dull)": Degradation(saturation=0.6),
    "saturation 1.4 (garish)": Degradation(saturation=1.4),
    "warm cast": Degradation(white_balance=(1.15, 1.0, 0.85)),
    "cool cast": Degradation(white_balance=(0.85, 1.0, 1.15)),
    "lifted blacks 0.1": Degradation(black_lift=0.1),
}


def benchmark_degradations(count: int, seed: int = 2018) -> list[Degradation]:
    """The fixed list of family-A degradations used by benchmarks and held-out evaluation (all damaged)."""
    rng = random.Random(seed)
    return [random_degradation(rng) for _ in range(count)]
