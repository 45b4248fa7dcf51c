"""WGAN losses, the one-sided linear gradient penalty, and the adaptive penalty weight (A-WGAN).

Sign conventions follow the release: a critic scores real photos *high*. For a critic D, real batch r and
generated batch f:
    critic loss     = mean(D(f)) - mean(D(r)) + lambda * P          (minimised by the critic)
    adversarial     = -mean(D(f))                                    (minimised by the generator)
    P               = mean(max(0, ||grad_x D(x_hat)||_2 - 1)),   x_hat = r + u (f - r),  u ~ U(0,1) per sample
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field


def critic_wasserstein_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean(D(fake)) - mean(D(real)); scores [B]. Scalar."""
    return fake_scores.mean() - real_scores.mean()


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake)); scores [B]. Scalar."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-sided linear penalty mean(max(0, ||grad D(x_hat)|| - 1)) on random interpolates.

    real, fake: [B,C,H,W] (fake is detached here). The graph is kept (create_graph=True) so the penalty
    has a gradient with respect to the critic's weights. Returns a scalar >= 0.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    u = torch.rand((real.shape[0], 1, 1, 1), generator=generator, device="cpu").to(real)
    x_hat = (real.detach() + u * (fake.detach() - real.detach())).requires_grad_(True)
    scores = critic(x_hat)
    (grads,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grads.flatten(1).norm(2, dim=1)
    return torch.clamp(norms - 1.0, min=0.0).mean()


class AdaptiveLambdaConfig(BaseModel):
    """A-WGAN rule for the gradient-penalty weight (per critic).

    After each critic step: m <- decay*m + (1-decay)*P. When at least `cooldown` steps have passed since
    the last change: m > upper -> lambda *= increase_factor, m <- 0 (the release); m < lower ->
    lambda *= decrease_factor (the paper's decrease, which the release never did).

    The decrease stops at ``min_value``, which defaults to ``initial``: lambda comes back down after it grew but
    never goes below where it started, as in the release (whose lambda only ever grew). Without that floor a
    well-behaved critic (P ~ 0) halves lambda every ``cooldown`` steps, 10 -> 1e-3 in ~700 updates, and the
    penalty stops constraining the critic. Set ``min_value`` below ``initial`` for the paper's unbounded decrease.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial: float = Field(10.0, gt=0)
    decay: float = Field(0.99, ge=0, lt=1)
    upper: float = Field(0.05, description="Moving-average penalty above which lambda grows (release 0.05).")
    lower: float = Field(
        0.001, ge=0, description="Below this lambda shrinks (paper); 0 disables the decrease (release behaviour)."
    )
    increase_factor: float = Field(2.0, gt=1)
    decrease_factor: float = Field(0.5, gt=0, lt=1)
    cooldown: int = Field(50, ge=1, description="Steps without a change required before the next change.")
    reset_average_on_increase: bool = True
    reset_average_on_decrease: bool = Field(
        False, description="Keeping m after a decrease avoids shrinking again on an artificially zeroed average."
    )
    min_value: float | None = Field(
        None, gt=0, description="Floor of the decrease; None: the initial value (never below where it started)."
    )
    max_value: float = Field(1e6, gt=0)

    @property
    def floor(self) -> float:
        """The lowest value lambda may take: min_value, or the initial value when min_value is None."""
        return self.initial if self.min_value is None else self.min_value


class AdaptiveLambda:
    """Mutable A-WGAN state: the current weight, the moving average, steps since the last change."""

    def __init__(self, config: AdaptiveLambdaConfig | None = None):
        self.config = config or AdaptiveLambdaConfig()
        self.value = float(self.config.initial)
        self.moving_average = 0.0
        self.steps_since_change = 0
        self.history: list[tuple[int, float]] = []  # (update index, new value) of each change
        self.updates = 0

    def update(self, penalty: float) -> float:
        """Feed the penalty of one critic step; returns lambda for the next step."""
        c = self.config
        self.updates += 1
        self.moving_average = c.decay * self.moving_average + (1.0 - c.decay) * float(penalty)
        self.steps_since_change += 1
        if self.steps_since_change < c.cooldown:
            return self.value
        if self.moving_average > c.upper and self.value < c.max_value:
            self.value = min(self.value * c.increase_factor, c.max_value)
            if c.reset_average_on_increase:
                self.moving_average = 0.0
        elif c.lower > 0 and self.moving_average < c.lower and self.value > c.floor:
            self.value = max(self.value * c.decrease_factor, c.floor)
            if c.reset_average_on_decrease:
                self.moving_average = 0.0
        else:
            return self.value
        self.steps_since_change = 0
        self.history.append((self.updates, self.value))
        return self.value

    def state_dict(self) -> dict:
        return {
            "value": self.value,
            "moving_average": self.moving_average,
            "steps_since_change": self.steps_since_change,
            "updates": self.updates,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.moving_average = float(state["moving_average"])
        self.steps_since_change = int(state["steps_since_change"])
        self.updates = int(state["updates"])
        self.history = [(int(i), float(v)) for i, v in state.get("history", [])]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE over the valid (unpadded) region of each image, then averaged over the batch (every image counts
    the same, whatever its padding); a, b [B,C,H,W], mask [B,1,H,W] in {0,1}."""
    return per_image_mse(a, b, mask).mean()


def per_image_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE per image [B] over the valid region (mask [B,1,H,W])."""
    sq = (a - b) ** 2
    if mask is None:
        return sq.flatten(1).mean(1)
    return (sq * mask).flatten(1).sum(1) / (mask.flatten(1).sum(1) * a.shape[1]).clamp(min=1)


def psnr_loss(
    output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, min_mse: float = 1e-10
) -> torch.Tensor:
    """Supervised loss: mean over images of log10(MSE + min_mse) (= -PSNR/10 for [0,1] images); minimise it.

    min_mse softly caps how much an image already reproduced to that precision still pulls (1e-5: 50 dB)."""
    return torch.log10(per_image_mse(output, target, mask) + min_mse).mean()
