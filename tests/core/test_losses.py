"""Gradient penalty and the adaptive penalty weight (A-WGAN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpe_core.losses import (
    AdaptiveLambda,
    AdaptiveLambdaConfig,
    critic_wasserstein_loss,
    generator_adversarial_loss,
    gradient_penalty,
    masked_mse,
    psnr_loss,
)
from dpe_core.nn import build_critic


class LinearCritic(nn.Module):
    """D(x) = <w, x> with ||w|| = scale: its gradient norm is exactly `scale` everywhere."""

    def __init__(self, shape, scale):
        super().__init__()
        w = torch.randn(shape)
        self.w = nn.Parameter(w / w.norm() * scale)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_penalty_is_zero_for_a_one_lipschitz_critic():
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    for scale in (0.3, 1.0):
        assert gradient_penalty(LinearCritic((3, 8, 8), scale), real, fake).item() == pytest.approx(0.0, abs=1e-5)


def test_penalty_is_positive_and_linear_for_a_steeper_critic():
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    # One-sided and linear: ||grad|| = 3 gives max(0, 3 - 1) = 2 (a squared penalty would give 4).
    assert gradient_penalty(LinearCritic((3, 8, 8), 3.0), real, fake).item() == pytest.approx(2.0, rel=1e-4)


def test_penalty_has_gradient_wrt_critic_weights():
    torch.manual_seed(0)
    critic = build_critic()
    real, fake = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.requires_grad
    penalty.backward()
    grads = [p.grad for p in critic.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0


def test_penalty_interpolates_per_sample_with_given_rng():
    critic = LinearCritic((3, 4, 4), 2.0)
    real, fake = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    a = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(5))
    b = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_wasserstein_sign_conventions():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert critic_wasserstein_loss(real, fake).item() == pytest.approx(0.0 - 3.0)  # critic wants real high
    assert generator_adversarial_loss(fake).item() == pytest.approx(0.0)
    assert generator_adversarial_loss(torch.tensor([3.0])).item() == -3.0


def test_adaptive_lambda_doubles_after_cooldown_when_penalty_stays_high():
    lam = AdaptiveLambda(AdaptiveLambdaConfig(initial=10, decay=0.99, upper=0.05, lower=0.0, cooldown=50))
    values = [lam.update(10.0) for _ in range(120)]
    # m = 0.01 * 10 = 0.1 > 0.05 already after the first step, but no change is allowed before 50 steps.
    assert values[:49] == [10.0] * 49
    assert values[49] == 20.0 and lam.history[0] == (50, 20.0)
    assert values[50:99] == [20.0] * 49  # m reset to 0 and another cooldown
    assert values[99] == 40.0
    # m was reset to 0 at the change at update 100, then averaged 20 more penalties of 10.
    assert lam.moving_average == pytest.approx(10 * (1 - 0.99**20))


def test_adaptive_lambda_moving_average_follows_the_release_formula():
    lam = AdaptiveLambda(AdaptiveLambdaConfig(cooldown=1000))
    m = 0.0
    for p in (0.3, 0.0, 1.2, 0.5):
        lam.update(p)
        m = 0.99 * m + 0.01 * p
    assert lam.moving_average == pytest.approx(m)


def test_adaptive_lambda_decreases_when_penalty_is_tiny_and_respects_bounds():
    config = AdaptiveLambdaConfig(initial=8, lower=1e-3, upper=0.05, decrease_factor=0.5, cooldown=10, min_value=1.0)
    lam = AdaptiveLambda(config)
    values = [lam.update(0.0) for _ in range(60)]
    assert values[8] == 8.0 and values[9] == 4.0  # first decrease exactly at the 10th step
    assert values[19] == 2.0 and values[29] == 1.0
    assert values[-1] == 1.0  # clamped at min_value
    assert [v for _, v in lam.history] == [4.0, 2.0, 1.0]


def test_adaptive_lambda_release_behaviour_never_decreases():
    lam = AdaptiveLambda(AdaptiveLambdaConfig(lower=0.0, cooldown=5))
    assert all(lam.update(0.0) == 10.0 for _ in range(100))


def test_adaptive_lambda_scripted_sequence_up_then_down():
    lam = AdaptiveLambda(AdaptiveLambdaConfig(initial=10, cooldown=3, decay=0.5, upper=0.5, lower=0.01))
    script = [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    got = [lam.update(p) for p in script]
    # step3: m=1.75>0.5 -> x2, m=0; steps 4-6: m=0 < 0.01 -> /2 at step 6; steps 7-9 -> /2 at step 9
    assert got == [10, 10, 20, 20, 20, 10, 10, 10, 5, 5]


def test_adaptive_lambda_state_survives_checkpoint_round_trip(tmp_path):
    import json

    a = AdaptiveLambda(AdaptiveLambdaConfig(cooldown=4))
    for p in (1.0, 2.0, 0.5, 3.0, 0.1):
        a.update(p)
    path = tmp_path / "lam.json"
    path.write_text(json.dumps(a.state_dict()))
    b = AdaptiveLambda(AdaptiveLambdaConfig(cooldown=4))
    b.load_state_dict(json.loads(path.read_text()))
    for p in (5.0, 5.0, 5.0, 5.0, 0.0):
        assert a.update(p) == b.update(p)
    assert a.state_dict() == b.state_dict()


def test_masked_losses_use_only_the_valid_region():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.zeros(1, 3, 4, 4)
    b[..., 2:, :] = 1.0  # differs only in the padded bottom half
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert masked_mse(a, b, mask).item() == 0.0
    assert masked_mse(a, b).item() == 0.5
    b[..., 0, 0] = 0.5
    assert psnr_loss(a, b, mask).item() == pytest.approx(torch.log10(torch.tensor(3 * 0.25 / 24)).item(), rel=1e-5)
