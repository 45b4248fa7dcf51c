"""Colour transport: the unpaired prior of the two-way GAN (TrainConfig.transport_weight)."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch

from dpe_core.quality.degradations import Degradation
from dpe_core.quality.style import pooled_histogram_transfer
from dpe_core.training import TrainConfig, build_step
from dpe_core.training.data import PairedData, PhotoSet, UnpairedData
from dpe_core.training.transport import (
    MAX_POOLED_PIXELS,
    AffineColourTransport,
    QuantileColourTransport,
    _pooled_pixels,
    fit_colour_transport,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A look made of per-channel curves (cooler, darker mid-tones): what a pooled per-channel map can express.
LOOK = Degradation(gamma=1.25, white_balance=(0.9, 1.0, 1.1))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_transport_learns_a_per_channel_look_from_two_unpaired_sets_of_real_photos(testdata):
    photos = PhotoSet(sorted(glob.glob(str(testdata / "natural" / "kpa_*.jpg"))), 64).images
    # Sources: the left halves of every other photo; references: the look applied to their right halves (like
    # content, never the same pixels); held out: the other photos, in neither set.
    sources = [p[:, :, : p.shape[2] // 2] for p in photos[0::2]]
    references = [LOOK.apply(p[:, :, p.shape[2] // 2 :]) for p in photos[0::2]]
    held_out = photos[1::2]
    transport = QuantileColourTransport.fit(sources, references)
    identity = np.mean([_psnr(t, LOOK.apply(t)) for t in held_out])
    mapped = np.mean([_psnr(transport.forward(t[None])[0], LOOK.apply(t)) for t in held_out])
    print(f"held-out photos against the look: identity {identity:.2f} dB, transport {mapped:.2f} dB")
    # Never a pair: sources and references are different photos, and the held-out ones are neither.
    assert mapped > identity + 2.5
    back = np.mean([_psnr(transport.inverse(LOOK.apply(t)[None])[0], t) for t in held_out])
    assert back > identity + 2.5  # the map back (G_Y's target) undoes the look as well


# A look made of a colour matrix and an offset (duller, cooler, flatter): cross-channel, what per-channel curves miss.
MATRIX_LOOK = Degradation(saturation=0.7, white_balance=(0.95, 1.0, 1.08), contrast=0.85)


def test_affine_transport_learns_a_colour_matrix_look_that_per_channel_curves_miss(testdata):
    photos = PhotoSet(sorted(glob.glob(str(testdata / "natural" / "kpa_*.jpg"))), 64).images
    sources = [p[:, :, : p.shape[2] // 2] for p in photos[0::2]]
    references = [MATRIX_LOOK.apply(p[:, :, p.shape[2] // 2 :]) for p in photos[0::2]]
    held_out = photos[1::2]
    identity = np.mean([_psnr(t, MATRIX_LOOK.apply(t)) for t in held_out])
    scores = {}
    for kind in ("quantile", "affine"):
        transport = fit_colour_transport(sources, references, kind)
        scores[kind] = np.mean([_psnr(transport.forward(t[None])[0], MATRIX_LOOK.apply(t)) for t in held_out])
        scores[kind + " back"] = np.mean([_psnr(transport.inverse(MATRIX_LOOK.apply(t)[None])[0], t)
                                          for t in held_out])
    print(f"identity {identity:.2f} dB; " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    assert scores["affine"] > identity + 2.5 and scores["affine"] > scores["quantile"] + 1.5
    assert scores["affine back"] > identity + 1.5


def test_affine_transport_maps_the_source_clouds_mean_and_covariance_onto_the_references():
    g = torch.Generator().manual_seed(4)
    mix = torch.tensor([[0.8, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.2, 0.5]])
    sources = [torch.rand(3, 40, 40, generator=g) * 0.6 + 0.2 for _ in range(3)]
    references = [(torch.einsum("ij,jhw->ihw", mix, torch.rand(3, 40, 40, generator=g) * 0.6 + 0.2) + 0.1)
                  for _ in range(3)]
    transport = AffineColourTransport.fit(sources, references)
    mapped = transport.forward(torch.stack(sources)).permute(1, 0, 2, 3).reshape(3, -1).double()
    target = torch.stack(references).permute(1, 0, 2, 3).reshape(3, -1).double()
    torch.testing.assert_close(mapped.mean(1), target.mean(1), atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.cov(mapped), torch.cov(target), atol=2e-4, rtol=0)
    x = torch.stack(sources)
    torch.testing.assert_close(transport.inverse(transport.forward(x)), x, atol=1e-4, rtol=0)
    assert torch.allclose(transport.matrix, transport.matrix.T, atol=1e-5)  # the Monge map is symmetric
    with pytest.raises(ValueError, match="unknown colour transport"):
        fit_colour_transport(sources, references, "lut")


def test_transport_is_the_style_benchmarks_no_training_yardstick():
    g = torch.Generator().manual_seed(3)
    sources = [torch.rand(3, 20, 30, generator=g) ** 2 for _ in range(3)]
    references = [torch.rand(3, 25, 25, generator=g) ** 0.5 for _ in range(2)]
    image = torch.rand(3, 16, 24, generator=g)
    ours = QuantileColourTransport.fit(sources, references).forward(image[None])[0].permute(1, 2, 0).numpy()
    yardstick = pooled_histogram_transfer([s.permute(1, 2, 0).numpy() for s in sources],
                                          [r.permute(1, 2, 0).numpy() for r in references])
    np.testing.assert_allclose(ours, yardstick(image.permute(1, 2, 0).numpy()), atol=1e-5)


def _unpaired(n: int = 4, size: int = 64) -> UnpairedData:
    g = torch.Generator().manual_seed(11)

    def photo_set(scale: float, offset: float) -> PhotoSet:
        photos = PhotoSet.__new__(PhotoSet)
        photos.urls, photos.size = [f"memory://{i}.png" for i in range(n)], size
        photos.images = [torch.rand(3, size, size, generator=g) * scale + offset for _ in range(n)]
        return photos

    return UnpairedData(photo_set(0.4, 0.05), photo_set(0.4, 0.55))


@pytest.mark.parametrize("kind", ["quantile", "affine"])
def test_two_way_transport_term_pulls_the_generator_towards_the_references_colours(kind):
    data = _unpaired()
    config = TrainConfig(mode="two-way", image_size=64, batch_size=2, critic_steps_per_generator_step=1, lr=3e-3,
                         seed=5, identity_weight=0.0, cycle_weight=0.0, transport_weight=1e3, transport_kind=kind)
    step = build_step(config)
    step.prepare(data)
    x = torch.stack(data.source.images[:2])
    # Measured with batch statistics, as in training: 40 updates are too few to settle the running ones.
    with torch.no_grad():
        start = float(step.g_x(x, domain=0).mean())
    metrics = [step.step(data.batch(config.seed, i, config.batch_size)) for i in range(40)]
    with torch.no_grad():
        end = float(step.g_x(x, domain=0).mean())
    reference_mean = float(torch.stack(data.reference.images).mean())
    print(f"mean of G_X(x): {start:.3f} -> {end:.3f} (references {reference_mean:.3f})")
    assert abs(end - reference_mean) < 0.5 * abs(start - reference_mean)
    assert metrics[-1]["transport_mse"] < 0.5 * metrics[0]["transport_mse"]


def test_transport_weight_needs_unpaired_photos_and_a_prepared_step():
    config = TrainConfig(mode="two-way", image_size=64, batch_size=2, critic_steps_per_generator_step=1,
                         transport_weight=1.0)
    step = build_step(config)
    data = _unpaired()
    with pytest.raises(RuntimeError, match="prepare"):
        step.step(data.batch(0, 0, 2))
    with pytest.raises(TypeError, match="unpaired"):
        step.prepare(PairedData(data.source, data.reference))
    with pytest.raises(ValueError, match="at least one"):
        QuantileColourTransport.fit([], data.reference.images)


def test_large_sets_give_a_bounded_sample_and_the_same_transport():
    g = torch.Generator().manual_seed(8)
    large = [torch.rand(3, 512, 384, generator=g) ** 1.5 for _ in range(2)]
    bound = 100_000  # the default (4 M a set) scaled down to these two photos
    assert len(_pooled_pixels(large, bound)) <= bound + len(large)  # at most one extra pixel a photo
    small = [torch.rand(3, 64, 48, generator=g) for _ in range(2)]
    assert len(_pooled_pixels(small, bound)) == 2 * 64 * 48  # under the bound: every pixel
    assert MAX_POOLED_PIXELS >= 36 * 256 * 192  # the style benchmark's 256-px sets: every pixel
    references = [torch.rand(3, 256, 256, generator=g) ** 0.7 for _ in range(2)]
    x = torch.stack(small)
    for kind in ("quantile", "affine"):
        sampled = fit_colour_transport(large, references, kind, max_pixels=bound)
        every_pixel = fit_colour_transport(large, references, kind, max_pixels=10**9)
        torch.testing.assert_close(sampled.forward(x), every_pixel.forward(x), atol=5e-3, rtol=0)


@pytest.mark.parametrize("kind", ["quantile", "affine"])
def test_transport_init_starts_both_generators_at_the_transport_and_the_model_file_keeps_it(kind, tmp_path):
    from dpe_core.inference import Enhancer
    from dpe_core.training.loop import export_model, train

    data = _unpaired()
    config = TrainConfig(mode="two-way", image_size=64, batch_size=2, critic_steps_per_generator_step=1, seed=5,
                         steps=1, lr=1e-9, transport_weight=0.0, transport_kind=kind, transport_init=True,
                         generator={"colour_prior": True, "train_size": 64})
    result = train(config, data=_wrapped(data))
    transport = fit_colour_transport(data.source.images, data.reference.images, kind)
    x = torch.stack(data.source.images[:2])
    y = torch.stack(data.reference.images[:2])
    g_x, g_y = result.step.g_x.eval(), result.step.g_y.eval()
    with torch.no_grad():
        # The U-Nets start near the identity (init scale 1e-3), so the generators compute ~the transport.
        assert _psnr(g_x(x), transport.forward(x)) > 40
        assert _psnr(g_x(x), x) < 25  # and not the identity: the sets differ by 0.5 in every channel
        assert _psnr(g_y(y), transport.inverse(y)) > 40
    export_model(result, str(tmp_path / "model"), "prior-test", "1")
    enhancer = Enhancer.from_pretrained(str(tmp_path / "model"))
    image = x[0].permute(1, 2, 0).numpy()
    for mode in ("paper", "full"):  # the folded inference net applies the prior as training did
        out = torch.from_numpy(np.asarray(enhancer.enhance(image, mode=mode), dtype=np.float32)).permute(2, 0, 1)
        assert _psnr(out, transport.forward(x[:1])[0]) > 35, mode


def _wrapped(data: UnpairedData):
    from dpe_core.training.loop import TrainingData

    return TrainingData(train=data)


def test_transport_init_needs_the_generators_colour_prior():
    with pytest.raises(ValueError, match="colour_prior"):
        TrainConfig(mode="two-way", image_size=64, transport_init=True)
    with pytest.raises(ValueError, match="two-way"):
        TrainConfig(mode="supervised", transport_init=True, generator={"colour_prior": True})


def test_colour_prior_is_the_identity_until_set_and_checks_what_it_is_given():
    from dpe_core.nn.generator import ColourPrior

    prior = ColourPrior()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(prior(x), x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="257"):
        prior.set_curves(torch.zeros(5, 3), torch.zeros(5, 3))
    backwards = torch.linspace(1, 0, ColourPrior.LEVELS)[:, None].repeat(1, 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        prior.set_curves(backwards, backwards)
    with pytest.raises(ValueError, match="3,3"):
        prior.set_affine(torch.eye(2), torch.zeros(3))
