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
from dpe_core.nn import CriticConfig, build_critic


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
    # A steep critic (unit-variance init): the release's 1e-3 init starts with ||grad D|| far below 1, where the
    # one-sided penalty is 0 and has no gradient.
    critic = build_critic(CriticConfig(init_scale=1.0))
    real, fake = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.requires_grad and penalty.item() > 0
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
    config = AdaptiveLambdaConfig(initial=10, cooldown=3, decay=0.5, upper=0.5, lower=0.01, min_value=1e-3)
    lam = AdaptiveLambda(config)
    script = [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    got = [lam.update(p) for p in script]
    # step3: m=1.75>0.5 -> x2, m=0; steps 4-6: m=0 < 0.01 -> /2 at step 6; steps 7-9 -> /2 at step 9
    assert got == [10, 10, 20, 20, 20, 10, 10, 10, 5, 5]


def test_adaptive_lambda_never_goes_below_its_initial_value_by_default():
    lam = AdaptiveLambda()  # defaults: initial 10, the paper's decrease enabled, floor = initial
    assert lam.config.floor == 10.0
    assert all(lam.update(0.0) == 10.0 for _ in range(1000))  # a well-behaved critic: P = 0 throughout
    assert lam.history == []


def test_adaptive_lambda_default_goes_up_then_back_down_to_the_floor():
    lam = AdaptiveLambda(AdaptiveLambdaConfig(cooldown=5, decay=0.5))
    up = [lam.update(1.0) for _ in range(10)]
    assert up[4] == 20.0 and up[9] == 40.0  # m > 0.05: doubles after each cooldown
    down = [lam.update(0.0) for _ in range(100)]
    assert [v for _, v in lam.history] == [20.0, 40.0, 20.0, 10.0]  # halves back to the initial value, no lower
    assert down[-1] == 10.0


def test_adaptive_lambda_configured_floor_allows_the_papers_decrease():
    lam = AdaptiveLambda(AdaptiveLambdaConfig(min_value=1e-3))
    values = [lam.update(0.0) for _ in range(1000)]
    # Halving every 50 steps: 10 -> 1e-3 (the floor) after ~14 halvings, ~700 updates (the old default).
    assert values[49] == 5.0
    assert values[-1] == 1e-3 and min(values) == 1e-3
    assert 650 <= lam.history[-1][0] <= 750


def test_adaptive_lambda_old_config_with_explicit_min_value_still_loads():
    config = AdaptiveLambdaConfig.model_validate(AdaptiveLambdaConfig(min_value=1e-3).model_dump(mode="json"))
    assert config.floor == 1e-3
    assert AdaptiveLambdaConfig.model_validate(AdaptiveLambdaConfig().model_dump(mode="json")).floor == 10.0


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


def test_masked_mse_averages_per_image_then_over_the_batch():
    # Two images with different valid areas: a pooled mean over all valid pixels would weight the larger one more.
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[0] = 1.0  # image 0: error 1 everywhere, valid area 4 pixels
    b[1] = 0.5  # image 1: error 0.25 everywhere, valid area 16 pixels
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2, :2] = 1
    mask[1] = 1
    assert masked_mse(a, b, mask).item() == pytest.approx((1.0 + 0.25) / 2)
    pooled = (((a - b) ** 2) * mask).sum() / (mask.sum() * 3)
    assert pooled.item() == pytest.approx((4 * 1.0 + 16 * 0.25) / 20)  # the old formula: 0.4, not 0.625
    assert masked_mse(a, b, mask).item() != pytest.approx(pooled.item())
    assert psnr_loss(a, b, mask).item() == pytest.approx((0.0 + torch.log10(torch.tensor(0.25)).item()) / 2)
