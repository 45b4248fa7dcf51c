"""The folded inference graph (dpe_core.inference_graph): the same function as the generator, with fewer passes."""

from __future__ import annotations

import pytest
import torch

from dpe_core.inference_graph import FoldedGenerator, enlarged_rate, fill_symmetric_border, sym_pad, tile_margin
from dpe_core.nn import build_generator, symmetric_pad
from tests.core.generators import assert_folds_and_round_trips, randomised_generator


@pytest.fixture(scope="module")
def generator():
    return randomised_generator()


@pytest.mark.parametrize("p", [1, 2, 3])
def test_sym_pad_is_numpy_symmetric(p):
    x = torch.randn(2, 3, 7, 9)
    assert torch.equal(sym_pad(x, p), symmetric_pad(x, p))
    small = torch.randn(1, 2, 2, 5)  # pad larger than the axis: numpy's repeated mirror
    assert torch.equal(sym_pad(small, 3), symmetric_pad(small, 3))


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_border_filled_in_place_equals_sym_pad(p, channels_last):
    # The decoder writes its upsampled, concatenated tensor into a padded buffer and fills only the ring.
    x = torch.randn(2, 5, 7, 9)
    buf = torch.full((2, 5, 7 + 2 * p, 9 + 2 * p), float("nan"))
    if channels_last:
        buf = buf.contiguous(memory_format=torch.channels_last)
    buf[:, :, p : p + 7, p : p + 9] = x
    assert torch.equal(fill_symmetric_border(buf, p), symmetric_pad(x, p))


@pytest.mark.parametrize("domain", [0, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_generator_computes_the_generator(generator, domain, channels_last):
    folded = FoldedGenerator(generator, domain=domain, channels_last=channels_last)
    x = torch.rand(2, 3, 200, 137)
    with torch.inference_mode():
        ref = generator(x, domain=domain)
        out = folded(x)
        g_ref = generator.global_feature(x, domain)
        g_out = folded.global_feature(x)
        given = folded(x, global_vector=g_ref * 0.5)
        given_ref = generator(x, domain=domain, global_vector=g_ref * 0.5)
    residual = (ref - x).abs().max()
    assert residual > 0.05  # a non-trivial net, so folding errors would show
    assert torch.allclose(out, ref, atol=2e-5 * float(residual), rtol=0)
    assert torch.allclose(g_out, g_ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(given, given_ref, atol=2e-5 * float(residual), rtol=0)


def test_folded_generator_computes_the_affine_head_generator():
    affine = randomised_generator(seed=3, output="affine")
    folded = FoldedGenerator(affine)
    x = torch.rand(2, 3, 96, 130)
    with torch.inference_mode():
        ref, out = affine(x), folded(x)
    residual = (ref - x).abs().max()
    assert residual > 0.05
    assert torch.allclose(out, ref, atol=2e-5 * float(residual), rtol=0)


def test_affine_head_applies_a_per_pixel_colour_matrix_and_widening_keeps_the_function(generator):
    from dpe_core.nn.generator import apply_head, widen_residual_head

    x = torch.rand(1, 3, 4, 5)
    head = torch.zeros(1, 12, 4, 5)
    assert torch.equal(apply_head(x, head), x)  # M = b = 0: the identity
    head[:, 0], head[:, 4], head[:, 8] = 1.0, -0.5, 0.0  # red x2, green x0.5, blue kept
    head[:, 11] = 0.1  # blue + 0.1
    expected = torch.stack([x[:, 0] * 2, x[:, 1] * 0.5, x[:, 2] + 0.1], dim=1)
    assert torch.allclose(apply_head(x, head), expected)
    # A trained residual model widened to the affine head starts as exactly the same function (fine-tuning).
    wide = build_generator(generator.config.model_copy(update={"output": "affine"})).eval()
    wide.load_state_dict(widen_residual_head(generator.state_dict()))
    photo = torch.rand(2, 3, 64, 80)
    with torch.inference_mode():
        assert torch.equal(wide(photo), generator(photo))


def test_statistics_branch_folds_exactly_starts_as_the_widened_model_and_reads_exposure(generator, tmp_path):
    from dpe_core.nn.generator import input_statistics, load_widened

    # Widened from a model without the branch, it computes exactly that model's function (fine-tuning start).
    wide = build_generator(generator.config.model_copy(update={"global_stats": True})).eval()
    load_widened(wide, generator.state_dict())
    photo = torch.rand(2, 3, 64, 80)
    with torch.inference_mode():
        assert torch.equal(wide(photo), generator(photo))
    # Trained (here: randomised), it folds exactly, survives save/load, and a one-stop darker copy of the same
    # photo gets another global vector: the statistics carry what the conv path must otherwise infer.
    torch.manual_seed(5)
    for p in wide.stats.parameters():
        p.data.normal_(0, 0.5)
    assert_folds_and_round_trips(wide, photo, tmp_path)
    with torch.inference_mode():
        bright, dark = wide.global_feature(photo[:1]), wide.global_feature(photo[:1] * 0.5)
    assert (bright - dark).abs().max() > 1e-3
    stats = input_statistics(photo[:1] * 0.5)
    assert stats.shape == (1, 25) and 0.49 < float(stats[0, 6]) < 0.5  # red 99th percentile of U(0,0.5)
    with pytest.raises(ValueError, match="does not fit"):
        load_widened(wide, {k: v for k, v in generator.state_dict().items() if k != "enc1.conv.weight"})


def test_enlarged_kernels(generator):
    assert enlarged_rate(512, 300) == 1 and enlarged_rate(1001, 777) == 2 and enlarged_rate(4000, 6000) == 12
    assert tile_margin(1) % 16 == 0 and tile_margin(4) > 4 * 79
    same = FoldedGenerator(generator, rate=1)
    resized = FoldedGenerator(generator, rate=3, kernels="resize")
    dilated = FoldedGenerator(generator, rate=3, kernels="dilate")
    for name in ("enc2", "dec3"):
        k = same.specs[name][2] * 2 + 1
        w1, w3 = getattr(same, f"{name}_w"), getattr(resized, f"{name}_w")
        assert w3.shape[-1] == 3 * (k - 1) + 1
        assert torch.allclose(w3.sum(dim=(2, 3)), w1.sum(dim=(2, 3)), atol=1e-5)  # each kernel keeps its sum
        assert dilated.specs[name][1] == 3 and torch.equal(getattr(dilated, f"{name}_w"), w1)
    assert torch.equal(resized.fuse_w, same.fuse_w)  # 1x1 convs untouched


def test_compiled_enhancer_gives_the_eager_result(generator):
    # compile=True keeps the decoder's padded-buffer copies out of the graph (torch.compiler.disable): the two
    # must still compute the same photo.
    from dpe_core.inference import Enhancer

    photos = [(torch.rand(90, 120, 3) * 255).to(torch.uint8).numpy() for _ in range(2)]
    eager = Enhancer(generator, device="cpu", working_size=96, compile_apply="off", bf16="off")
    compiled = Enhancer(generator, device="cpu", working_size=96, compile_apply="off", bf16="off", compile=True)
    for a, b in zip(eager.enhance_batch(photos, "paper"), compiled.enhance_batch(photos, "paper"), strict=True):
        assert a.shape == b.shape and int(abs(a.astype(int) - b.astype(int)).max()) <= 1
