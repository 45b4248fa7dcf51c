"""Generator, critic and iBN: shapes, parameter counts, release details, near-identity at init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpe_core.nn import (
    IndividualBatchNorm2d,
    build_critic,
    build_generator,
    conv_parameter_count,
    selu,
    symmetric_pad,
)
from dpe_core.nn.config import CriticConfig
from dpe_core.nn.layers import SELU_ALPHA, SELU_SCALE


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return build_generator().eval()


def test_generator_conv_parameter_count_matches_release(generator):
    count = conv_parameter_count(generator)
    print(f"generator conv parameters: {count:,}")
    assert count == 3_332_675
    global_conv = generator.global3.weight.numel() + generator.global3.bias.numel()
    assert global_conv == 1_048_704  # the 8x8 VALID global conv holds about a third of the net


def test_critic_parameter_count():
    count = sum(p.numel() for p in build_critic().parameters())
    print(f"critic parameters: {count:,}")
    assert 1_100_000 < count < 1_150_000


@pytest.mark.parametrize("size", [(512, 512), (480, 640), (333, 517), (517, 333), (37, 45)])
def test_generator_output_shape_any_size(generator, size):
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = generator(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_generator_rejects_wrong_channel_count(generator):
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        generator(torch.rand(1, 4, 64, 64))


def test_symmetric_padding_equals_numpy_symmetric():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    for pad in (1, 2, 4, 9):  # 9 > both sides: the mirrored pattern repeats, as numpy does
        expected = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
        assert np.array_equal(symmetric_pad(x, pad).numpy(), expected), pad
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 3), (0, 2)), mode="symmetric")
    assert np.array_equal(symmetric_pad(x, (0, 2, 1, 3)).numpy(), expected)
    reflect = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    assert not torch.equal(symmetric_pad(x, 2), reflect)  # the two are different things


def test_selu_uses_release_constants():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    expected = SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1))
    assert torch.allclose(selu(x), expected, atol=1e-7)
    assert not torch.allclose(selu(x), torch.selu(x))


def test_convs_are_symmetric_padded_valid_convs(generator):
    # A 5x5 stride-2 conv halves 512 exactly (pad 2 each side, VALID); the 8x8 global conv has no padding.
    assert generator.enc2.conv.symmetric_padding == 2 and generator.enc2.conv.padding == (0, 0)
    assert generator.global3.symmetric_padding == 0 and generator.global3.kernel_size == (8, 8)
    x = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        a5, _ = generator._encode(x, 0)
    assert a5.shape[-2:] == (32, 32)


def test_untrained_generator_is_near_identity_on_real_photos(generator, testdata):
    from dpe_core.training.data import load_rgb

    photos = sorted((testdata / "natural").glob("*.jpg"))[:4]
    x = torch.stack([load_rgb(str(p), 256)[:, :160, :160] for p in photos])
    with torch.no_grad():
        change = (generator(x) - x).abs().mean().item()
    print(f"mean abs change at init: {change:.5f}")
    assert change < 0.02


def test_output_init_scale_keeps_a_full_scale_net_near_identity(testdata):
    """init_scale 1 puts the SELUs in their non-linear range; a small residual conv keeps the start ~identity."""
    from dpe_core.nn import GeneratorConfig
    from dpe_core.training.data import load_rgb

    photos = sorted((testdata / "natural").glob("*.jpg"))[:4]
    x = torch.stack([load_rgb(str(p), 256)[:, :160, :160] for p in photos])
    changes = {}
    for output_scale in (None, 1e-4):
        torch.manual_seed(0)
        net = build_generator(GeneratorConfig(init_scale=1.0, output_init_scale=output_scale)).eval()
        with torch.no_grad():
            changes[output_scale] = (net(x) - x).abs().mean().item()
    assert changes[1e-4] < 0.02 < changes[None]


def test_generator_init_is_variance_scaling(generator):
    w = generator.enc4.conv.weight
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    assert w.std().item() == pytest.approx((1e-3 / fan_in) ** 0.5, rel=0.15)
    assert w.abs().max().item() <= 2 * (1e-3 / fan_in) ** 0.5 / 0.8796 + 1e-9  # truncated at 2 std
    assert torch.count_nonzero(generator.enc4.conv.bias) == 0


def test_critic_init_is_variance_scaling_with_init_scale():
    torch.manual_seed(0)
    assert build_critic().config.init_scale == 1e-3  # the release's critic init
    for scale in (1e-3, 1.0):
        critic = build_critic(CriticConfig(init_scale=scale))
        for conv in (critic.convs[3], critic.head):
            w = conv.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            assert w.std().item() == pytest.approx((scale / fan_in) ** 0.5, rel=0.15)
            assert w.abs().max().item() <= 2 * (scale / fan_in) ** 0.5 / 0.8796 + 1e-9
            assert torch.count_nonzero(conv.bias) == 0


def test_ibn_sets_keep_separate_statistics_and_parameters():
    torch.manual_seed(1)
    g = build_generator().train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    real = torch.rand(2, 3, 64, 64) * 0.5  # dark "real" photos -> set 0
    generated = torch.rand(2, 3, 64, 64) * 0.5 + 0.5  # bright "generated" inputs -> set 1
    for _ in range(3):
        opt.zero_grad()
        (g(real, domain=0).mean() + 2 * g(generated, domain=1).pow(2).mean()).backward()
        opt.step()
    bns = [m for m in g.modules() if isinstance(m, IndividualBatchNorm2d)]
    assert len(bns) == 13
    first = g.enc1.bn.sets
    # Running means follow each set's own inputs: set 1 saw brighter inputs.
    assert not torch.allclose(first[0].running_mean, first[1].running_mean)
    assert first[0].num_batches_tracked.item() == 3 and first[1].num_batches_tracked.item() == 3
    # Each set has its own learned scale/offset, and both moved away from their init (1, 0).
    assert not torch.allclose(first[0].weight, first[1].weight)
    assert not torch.allclose(first[0].weight, torch.ones_like(first[0].weight))
    # Stepping only domain 0 leaves set 1's statistics untouched.
    before = first[1].running_mean.clone()
    g(real, domain=0)
    assert torch.equal(first[1].running_mean, before)


def test_ibn_rejects_unknown_domain():
    with pytest.raises(ValueError, match="domain"):
        IndividualBatchNorm2d(4)(torch.rand(1, 4, 2, 2), domain=2)


def test_critic_one_score_per_image():
    critic = build_critic()
    for size in (512, 128, 64):
        assert critic(torch.rand(3, 3, size, size)).shape == (3,)
