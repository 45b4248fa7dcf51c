"""The critic's opt-in colour-statistics branch: it must see a global look on photos it was never trained on,
where the release critic (instance norms) cannot, and keep the gradient penalty meaningful."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dpe_core.losses import critic_wasserstein_loss, gradient_penalty
from dpe_core.nn import CriticConfig, build_critic
from dpe_core.nn.critic import SOFT_FEATURES, soft_colour_statistics
from dpe_core.quality.looks import LOOKS
from dpe_core.training.data import pad_to_square, resize_long_side


def _tensor(image: Image.Image) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return pad_to_square(resize_long_side(t, 64), 64)[0]


def _pairs(testdata, names):
    """Photos and their warm-contrast copies, 64 px squares [N,3,64,64]."""
    plain, looked = [], []
    for name in names:
        with Image.open(testdata / "natural" / name) as im:
            im.draft("RGB", (256, 256))  # the look is per pixel: a small copy shows it as well, 50x sooner
            rgb = im.convert("RGB")
            rgb.thumbnail((256, 256), Image.Resampling.BOX)
            plain.append(_tensor(rgb))
            looked.append(_tensor(LOOKS["warm-contrast"](rgb)))
    return torch.stack(plain), torch.stack(looked)


def test_soft_statistics_follow_the_photo_and_carry_gradients_to_every_pixel():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    stats = soft_colour_statistics(x)
    assert stats.shape == (2, SOFT_FEATURES) and torch.isfinite(stats).all()
    darker = soft_colour_statistics(x.detach() * 0.5)
    assert (darker[:, :30] >= stats.detach()[:, :30] - 1e-6).all()  # more pixels below every centre
    stats.sum().backward()
    assert (x.grad != 0).float().mean() > 0.99  # unlike a quantile, which moves one pixel


@pytest.mark.parametrize("mode", ["add", "only"])
def test_gradient_penalty_works_through_the_statistics_branch(mode):
    critic = build_critic(CriticConfig(global_stats=mode))
    with torch.no_grad():
        critic.stats[2].weight.mul_(1e4)  # steep enough that the one-sided penalty is active
    real, fake = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    penalty = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    assert penalty > 0
    penalty.backward()  # double backward through the soft statistics
    assert critic(real).shape == (2,)
    # Both weight matrices feel the penalty (biases cannot: with a piecewise-linear activation they do not
    # change the input gradient).
    weights = [critic.stats[0].weight, critic.stats[2].weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_statistics_critic_separates_a_look_on_held_out_photos(testdata):
    train_names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "kpa_blackie.jpg", "kpa_pool.jpg",
                   "kpa_spiff.jpg", "china.jpg"]
    held_out_names = ["kpa_new_wave_1.jpg", "kpa_grand_canyon_1.jpg", "branches.png", "kpa_skagen_2.jpg"]
    train_plain, train_look = _pairs(testdata, train_names)
    test_plain, test_look = _pairs(testdata, held_out_names)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest, and immune to a busy second core
    critic = build_critic(CriticConfig(global_stats="only"))
    optimiser = torch.optim.Adam(critic.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(300):
        # Unpaired, as in two-way training: the look's photos and the plain ones are drawn independently.
        i = torch.randint(len(train_names), (4,), generator=rng)
        j = torch.randint(len(train_names), (4,), generator=rng)
        real, fake = train_look[i], train_plain[j]
        optimiser.zero_grad()
        loss = critic_wasserstein_loss(critic(real), critic(fake)) + 10 * gradient_penalty(critic, real, fake, rng)
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    with torch.no_grad():
        margin = critic(test_look) - critic(test_plain)
    # Every held-out photo scores higher with the look than without it.
    assert (margin > 0).all(), margin


def test_cross_channel_statistics_see_a_colour_matrix_that_per_channel_marginals_miss():
    from dpe_core.nn.critic import CROSS_FEATURES

    # Two images with the same R, G and B values, paired differently across channels: identical per-channel
    # marginals, different colours (grey pixels against red/cyan ones).
    ramp = torch.linspace(0.05, 0.95, 64)
    grey = torch.stack([ramp, ramp, ramp]).reshape(1, 3, 8, 8)
    mixed = torch.stack([ramp, ramp.flip(0), ramp.flip(0)]).reshape(1, 3, 8, 8)
    plain = soft_colour_statistics(torch.cat([grey, mixed]))
    assert torch.allclose(plain[0, :-1], plain[1, :-1], atol=1e-6)  # only the saturation term differs
    cross = soft_colour_statistics(torch.cat([grey, mixed]), cross_channel=True)
    assert cross.shape == (2, SOFT_FEATURES + CROSS_FEATURES)
    assert torch.allclose(cross[:, :SOFT_FEATURES], plain)  # the plain statistics come first, unchanged
    extra = cross[:, SOFT_FEATURES:]
    assert extra[0, -3:].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)  # grey: channels move together
    assert extra[1, -3:].tolist() == pytest.approx([-1.0, -1.0, 1.0], abs=1e-4)
    assert (extra[0, :-3] - extra[1, :-3]).abs().max() > 0.2  # the opponent marginals tell them apart

    critic = build_critic(CriticConfig(global_stats="only", cross_channel_stats=True))
    real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0)).backward()
    assert critic(real).shape == (2,) and critic.stats[0].weight.grad is not None
    with pytest.raises(ValueError, match="statistics branch"):
        CriticConfig(cross_channel_stats=True)
