"""Enhancer: modes, sizes, kinds, batches, model files; guided upsampling. The folded graph: test_inference_graph.py."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dpe_core.guided import (
    EAGER,
    PixelSource,
    StripKernel,
    apply_affine,
    apply_coefficients,
    area_downscale,
    fit_affine,
    working_size,
)
from dpe_core.inference import Enhancer, ModelFileError
from dpe_core.nn import build_generator, save_model, symmetric_pad
from dpe_core.nn.modelfile import BUNDLED_MODELS
from dpe_core.quality.degradations import Degradation
from dpe_core.quality.metrics import psnr
from tests.core.generators import assert_folds_and_round_trips, randomised_generator


@pytest.fixture(scope="module")
def generator():
    return randomised_generator()


@pytest.fixture(scope="module")
def enhancer(generator):
    return Enhancer(generator, device="cpu", compile_apply="off")


@pytest.fixture(scope="module")
def quick(generator):
    """Working size 128: the same code paths (batching, kinds, dtypes) at a sixteenth of the network cost."""
    return Enhancer(generator, device="cpu", working_size=128, compile_apply="off")


def _photo(testdata: Path, name: str) -> np.ndarray:
    with Image.open(testdata / "natural" / name) as im:
        return np.array(im.convert("RGB"))


def _chw(array: np.ndarray) -> torch.Tensor:
    scale = 65535.0 if array.dtype == np.uint16 else 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------- guided upsampling
def test_area_downscale_is_exact_area_resampling():
    x = (np.random.default_rng(0).random((70, 50, 3)) * 255).astype(np.uint8)
    low = area_downscale(PixelSource(x), (30, 20), torch.device("cpu"), strip_pixels=1024)
    up = _chw(x).repeat_interleave(3, 1).repeat_interleave(2, 2)  # 210 x 100: 7x5 blocks are exact areas
    assert torch.allclose(low, F.avg_pool2d(up[None], (7, 5))[0], atol=1e-6)


def test_fit_recovers_a_global_affine_map():
    g = torch.rand(2, 3, 40, 60)
    m = torch.tensor([[0.9, 0.1, 0.0], [0.05, 1.1, -0.1], [0.0, 0.2, 0.8]])
    t = torch.einsum("ck,bkhw->bchw", m, g) + torch.tensor([0.05, -0.02, 0.1]).view(1, 3, 1, 1)
    assert (apply_coefficients(fit_affine(g, t, 2, 1e-6), g) - t).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_strip_apply_matches_whole_image_reference(dtype):
    rng = np.random.default_rng(1)
    h_big, w_big = 301, 257
    x = rng.random((h_big, w_big, 3))
    x = (
        (x * 255).astype(np.uint8)
        if dtype == np.uint8
        else (x * 65535).astype(np.uint16)
        if dtype == np.uint16
        else x.astype(np.float32)
    )
    coeffs = torch.randn(12, 17, 13) * 0.2
    for c in range(3):
        coeffs[5 * c] += 1
    out = apply_affine(PixelSource(x), coeffs, torch.device("cpu"), strip_pixels=4096)
    assert out.dtype == dtype and out.shape == x.shape
    full = F.interpolate(coeffs[None], size=(h_big, w_big), mode="bilinear", align_corners=False)
    ref = apply_coefficients(full, _chw(x)[None])[0].clamp(0, 1)
    tol = {np.uint8: 1 / 255 + 1e-6, np.uint16: 1 / 65535 + 1e-6, np.float32: 1e-5}[dtype]
    assert (_chw(out) - ref).abs().max() <= tol


def test_compiled_strip_kernel_matches_eager():
    x = (np.random.default_rng(2).random((240, 700, 3)) * 255).astype(np.uint8)
    coeffs = torch.randn(12, 30, 64) * 0.2 + torch.tensor([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0.0]).view(12, 1, 1)
    eager = apply_affine(PixelSource(x), coeffs, torch.device("cpu"), kernel=EAGER)
    compiled = apply_affine(PixelSource(x), coeffs, torch.device("cpu"), kernel=StripKernel(compiled=True))
    assert np.abs(eager.astype(int) - compiled.astype(int)).max() <= 1


class SmoothLocalTransform(torch.nn.Module):
    """A 'network' that is exactly a known smooth, spatially varying tone/colour transform.

    Two global degradations blended by a smooth ramp over the image (coordinates normalised to the valid region
    ``hw`` of the padded working square), so the same transform can be evaluated at any resolution.
    """

    first = Degradation(exposure_stops=0.4, gamma=0.8, white_balance=(1.1, 1.0, 0.9))
    second = Degradation(contrast=1.2, saturation=1.3, black_lift=0.03, white_balance=(0.9, 1.0, 1.1))

    def __init__(self):
        super().__init__()
        self.hw = (512, 512)

    @classmethod
    def at(cls, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        yy = (torch.arange(x.shape[-2], dtype=torch.float32) + 0.5) / h
        xx = (torch.arange(x.shape[-1], dtype=torch.float32) + 0.5) / w
        ramp = (0.5 + 0.5 * torch.sin(2.0 * xx[None, :] + 1.5 * yy[:, None])).clamp(0, 1)
        return torch.lerp(cls.first.apply(x), cls.second.apply(x), ramp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.at(x, *self.hw)


def test_full_reproduces_a_smooth_local_transform_at_full_resolution(testdata):
    photo = _photo(testdata, "lomiri_aitzgorri.jpg")  # 3088 x 2056, 6.3 MP
    big_h, big_w = photo.shape[:2]
    net = SmoothLocalTransform()
    net.hw = working_size(big_h, big_w, 512)
    enhancer = Enhancer(net, device="cpu", compile_apply="off")
    out = enhancer.enhance(photo, mode="full")
    assert out.shape == photo.shape and out.dtype == np.uint8
    truth = SmoothLocalTransform.at(_chw(photo)[None], big_h, big_w)[0]
    quality = psnr(_chw(out), truth)
    paper = enhancer.enhance(photo, mode="paper")
    upscaled = F.interpolate(_chw(paper)[None], size=(big_h, big_w), mode="bilinear", align_corners=False)[0]
    assert quality >= 40.0, f"guided upsampling {quality:.2f} dB"
    assert quality > psnr(upscaled, truth) + 5  # what guided upsampling is for


# ---------------------------------------------------------------------------------------------- model quality
@pytest.fixture(scope="module")
def real_model(testdata, tmp_path_factory):
    """The bundled default model when present, else a generator trained briefly here (supervised, 128 px)."""
    if (BUNDLED_MODELS / "default" / "model.safetensors").is_file():
        return Enhancer.from_pretrained("default", device="cpu", compile_apply="off")
    torch.manual_seed(0)
    g = build_generator()
    names = ["kpa_pool.jpg", "kpa_snow.jpg", "kpa_skagen.jpg", "china.jpg"]
    photos = []
    for name in names:
        im = torch.from_numpy(_photo(testdata, name).astype(np.float32) / 255).permute(2, 0, 1)
        h, w = working_size(*im.shape[1:], 128)
        im = F.interpolate(im[None], size=(h, w), mode="area")[0]
        photos.append(symmetric_pad(im, (0, 128 - w, 0, 128 - h)))
    target = torch.stack(photos)
    degraded = Degradation(exposure_stops=-0.5, gamma=1.2, white_balance=(0.9, 1.0, 1.1)).apply(target)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    g.train()
    for _ in range(8):
        loss = F.mse_loss(g(degraded), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    uri = str(tmp_path_factory.mktemp("model") / "trained.safetensors")
    save_model(g.eval(), uri)
    return Enhancer.from_pretrained(uri, device="cpu", compile_apply="off")


def test_full_downsampled_agrees_with_paper(real_model, testdata):
    # Damaged photos: a gentle model leaves good ones nearly alone, which would make the comparison void.
    damage = Degradation(exposure_stops=-1.2, contrast=0.7, white_balance=(1.12, 1.0, 0.88))
    for name in ("lomiri_picture0b.jpg", "kpa_grand_canyon_1.jpg", "chelsea.png"):
        good = torch.from_numpy(_photo(testdata, name).astype(np.float32) / 255).permute(2, 0, 1)
        photo = (damage.apply(good).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        full = real_model.enhance(photo, mode="full")
        paper = real_model.enhance(photo, mode="paper")
        assert full.shape == photo.shape and max(paper.shape[:2]) == real_model.working  # the model's train_size
        small = area_downscale(PixelSource(full), paper.shape[:2], torch.device("cpu"))
        moved = psnr(_chw(paper), area_downscale(PixelSource(photo), paper.shape[:2], torch.device("cpu")))
        assert moved < 45, f"{name}: the model barely changes the photo ({moved:.1f} dB), the check would be void"
        agreement = psnr(small, _chw(paper))
        assert agreement >= 35.0, f"{name}: full downsampled vs paper {agreement:.2f} dB"


# ---------------------------------------------------------------------------------------------- sizes and kinds
@pytest.mark.parametrize("size", [(333, 517), (1001, 777)])
@pytest.mark.parametrize("mode", ["full", "tiled"])
def test_output_size_equals_input_size(enhancer, size, mode):
    x = (np.random.default_rng(3).random((*size, 3)) * 255).astype(np.uint8)
    out = enhancer.enhance(x, mode=mode)
    assert out.shape == x.shape and out.dtype == np.uint8


def test_paper_mode_gives_the_512_protocol(enhancer, generator):
    x = np.random.default_rng(4).random((300, 451, 3)).astype(np.float32)
    out = enhancer.enhance(x, mode="paper")
    assert out.shape == (341, 512, 3) and out.dtype == np.float32
    low = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=(341, 512), mode="bilinear")
    with torch.inference_mode():
        ref = generator(symmetric_pad(low, (0, 0, 0, 512 - 341)))[0, :, :341].clamp(0, 1)
    assert torch.allclose(torch.from_numpy(out).permute(2, 0, 1), ref, atol=1e-4)


def test_tiled_equals_a_whole_image_forward(generator):
    x = np.random.default_rng(5).random((150, 230, 3)).astype(np.float32)
    tiled = Enhancer(generator, device="cpu", tile_size=64, compile_apply="off")  # 3 x 4 tiles + margins
    out = tiled.enhance(x, mode="tiled")
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    low = F.interpolate(t, size=working_size(150, 230, 512), mode="bilinear")
    padded = symmetric_pad(low, (0, 0, 0, 512 - low.shape[-2]))
    with torch.inference_mode():
        ref = generator(t, global_vector=generator.global_feature(padded))[0].clamp(0, 1)
    assert torch.allclose(torch.from_numpy(out).permute(2, 0, 1), ref, atol=1e-5)


def _with_statistics_heads(generator):
    """generator widened with both statistics branches and the output tone curve, their MLPs randomised (a
    trained model's stand-in)."""
    from dpe_core.nn.generator import load_widened

    wide = build_generator(generator.config.model_copy(update={"global_stats": True, "global_affine": True,
                                                                "post_curve_knots": 5}))
    load_widened(wide, generator.state_dict())
    torch.manual_seed(9)
    for p in [*wide.stats.parameters(), *wide.affine_mlp.parameters(), *wide.post_curve.parameters()]:
        p.data.normal_(0, 0.2)
    return wide.eval()


def test_global_colour_affine_folds_exactly_and_applies_one_matrix_per_photo(generator, tmp_path):
    from dpe_core.nn.generator import input_statistics, load_widened

    photo = torch.rand(2, 3, 64, 80)
    fresh = build_generator(generator.config.model_copy(update={"global_affine": True})).eval()
    load_widened(fresh, generator.state_dict())
    with torch.inference_mode():
        assert torch.equal(fresh(photo), generator(photo))  # zero-initialised: the widened model's function
    wide = _with_statistics_heads(generator)
    assert_folds_and_round_trips(wide, photo, tmp_path)
    with torch.inference_mode():
        # A hand-set last layer: red x2 and blue + 0.1 for every photo, on top of the U-Net's output.
        last = fresh.affine_mlp[-1]
        last.bias.zero_()
        last.bias[0], last.bias[11] = 1.0, 0.1
        shifted = fresh(photo) - generator(photo)
    expected = torch.zeros_like(photo)
    expected[:, 0], expected[:, 2] = photo[:, 0], 0.1
    assert torch.allclose(shifted, expected, atol=1e-6)
    assert input_statistics(photo).shape == (2, 25)


def test_tiled_gives_the_statistics_heads_the_whole_photo(generator):
    # Tiles must not each see their own statistics: any tiling gives the same output.
    wide = _with_statistics_heads(generator)
    x = np.random.default_rng(6).random((150, 230, 3)).astype(np.float32)
    x[:, :100] *= 0.3  # a dark left part: statistics of tiles differ from the photo's
    small = Enhancer(wide, device="cpu", tile_size=64, compile_apply="off").enhance(x, mode="tiled")
    whole = Enhancer(wide, device="cpu", tile_size=1024, compile_apply="off").enhance(x, mode="tiled")
    assert np.abs(small - whole).max() < 1e-4


def test_tiled_caps_the_long_side_and_keeps_the_input_size(generator):
    x = (np.random.default_rng(6).random((700, 900, 3)) * 255).astype(np.uint8)
    capped = Enhancer(generator, device="cpu", tiled_max_side=256, tiled_kernels="dilate", compile_apply="off")
    out = capped.enhance(x, mode="tiled")
    assert out.shape == x.shape
    full = capped.enhance(x, mode="full")
    assert psnr(_chw(out), _chw(full)) > 25  # same model, same global feature: close, not equal


@pytest.mark.parametrize("mode", ["full", "paper", "tiled"])
def test_batches_give_the_same_result_as_single_images(quick, mode):
    rng = np.random.default_rng(7)
    images = [rng.random(s + (3,)).astype(np.float32) for s in [(120, 200), (333, 517), (90, 90)]]
    batch = quick.enhance_batch(images, mode=mode)
    for image, out in zip(images, batch, strict=True):
        single = quick.enhance(image, mode=mode)
        assert out.shape == single.shape
        np.testing.assert_allclose(out, single, atol=1e-5, rtol=0)


def test_tensor_batches(quick):
    x = torch.rand(2, 3, 64, 96)
    out = quick.enhance(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out[1], quick.enhance(x[1]), atol=1e-5, rtol=0)


def test_uint16_rgba_stays_uint16_and_alpha_is_untouched(quick):
    rng = np.random.default_rng(8)
    x = (rng.random((150, 230, 4)) * 65535).astype(np.uint16)
    for mode in ("full", "tiled"):
        out = quick.enhance(x, mode=mode)
        assert out.dtype == np.uint16 and out.shape == x.shape
        assert np.array_equal(out[:, :, 3], x[:, :, 3])
        assert np.abs(out[:, :, :3].astype(int) - x[:, :, :3].astype(int)).max() > 257  # enhanced, at 16 bits
    paper = quick.enhance(x, mode="paper")
    assert paper.dtype == np.uint16 and paper.shape == (83, 128, 4)


def test_pil_images_keep_their_mode_and_alpha(quick):
    rgba = Image.fromarray((np.random.default_rng(9).random((64, 80, 4)) * 255).astype(np.uint8), "RGBA")
    out = quick.enhance(rgba)
    assert out.mode == "RGBA" and out.size == rgba.size
    assert np.array_equal(np.asarray(out)[:, :, 3], np.asarray(rgba)[:, :, 3])
    gray = rgba.convert("L")
    assert quick.enhance(gray).mode == "L"
    assert quick.enhance(rgba.convert("P")).mode == "RGB"


class FakePhoto:
    """Duck-typed Photo: pixels + alpha; with_pixels returns a new one (alpha unchanged at the same size)."""

    def __init__(self, pixels, alpha=None):
        self.pixels, self.alpha = pixels, alpha

    def with_pixels(self, new):
        return FakePhoto(new, self.alpha)


def test_photo_objects(quick):
    rng = np.random.default_rng(10)
    alpha = (rng.random((100, 120)) * 65535).astype(np.uint16)
    photo = FakePhoto((rng.random((100, 120, 3)) * 65535).astype(np.uint16), alpha)
    out = quick.enhance(photo)
    assert isinstance(out, FakePhoto) and out.pixels.dtype == np.uint16 and out.pixels.shape == (100, 120, 3)
    assert out.alpha is alpha


def test_paths_are_read_with_photo_io(quick, testdata):
    pytest.importorskip("dpe_core.io.photo")
    out = quick.enhance(str(testdata / "natural" / "chelsea.png"))
    assert out.pixels.shape == (300, 451, 3) and out.pixels.dtype == np.uint8


def test_unknown_inputs_and_modes_are_refused(quick):
    with pytest.raises(ValueError, match="mode"):
        quick.enhance(np.zeros((8, 8, 3), np.uint8), mode="fast")
    with pytest.raises(TypeError):
        quick.enhance(object())
    with pytest.raises(ValueError):
        quick.enhance(np.zeros((8, 8, 5), np.uint8))


# ---------------------------------------------------------------------------------------------- strength
def _strength_cases(generator):
    """(name, enhancer, mode): every mode, and tiled both at full size and capped (the upsampled-enhancement path)."""
    quick = Enhancer(generator, device="cpu", working_size=128, compile_apply="off")
    capped = Enhancer(generator, device="cpu", working_size=128, tiled_max_side=128, tiled_kernels="dilate",
                      compile_apply="off")
    return [("full", quick, "full"), ("paper", quick, "paper"), ("tiled", quick, "tiled"),
            ("tiled-capped", capped, "tiled")]


def test_strength_zero_returns_the_input_and_one_the_full_correction_in_every_mode(generator):
    x = (np.random.default_rng(11).random((150, 230, 3)) * 255).astype(np.uint8)  # larger than the working size
    for name, enhancer, mode in _strength_cases(generator):
        full = enhancer.enhance(x, mode=mode)
        assert np.array_equal(enhancer.enhance(x, mode=mode, strength=1.0), full), name  # today's output
        none = enhancer.enhance(x, mode=mode, strength=0)
        reference = x
        if mode == "paper":  # the working-size copy of the input
            low = area_downscale(PixelSource(x), working_size(150, 230, 128), torch.device("cpu"))
            reference = (low.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        assert none.shape == reference.shape and none.dtype == np.uint8, name
        assert np.abs(none.astype(int) - reference).max() <= 1, name  # within 8-bit rounding
        assert np.abs(full.astype(int) - reference).max() > 10, name  # the model does change this photo


def test_strength_half_is_halfway_in_full_mode_with_guided_upsampling(generator):
    quick = Enhancer(generator, device="cpu", working_size=128, compile_apply="off")
    x = np.random.default_rng(12).random((300, 420, 3)).astype(np.float32)  # guided: 420 px from a 128-px fit
    full, half = quick.enhance(x, strength=1.0), quick.enhance(x, mode="full", strength=0.5)
    inside = (full > 0) & (full < 1)  # outputs are clipped to [0, 1]: compare where the full correction is not
    assert inside.mean() > 0.5 and np.abs(full - x).mean() > 0.02
    np.testing.assert_allclose(half[inside], (0.5 * full + 0.5 * x)[inside], atol=2e-5, rtol=0)
    paper_full, paper_half = quick.enhance(x, "paper"), quick.enhance(x, "paper", strength=0.5)
    assert np.abs(paper_half - paper_full).mean() > 0.01


def test_blend_with_identity_equals_blending_the_outputs():
    from dpe_core.guided import blend_with_identity

    coeffs = torch.randn(1, 12, 6, 7)
    image = torch.rand(1, 3, 6, 7)
    for s in (0.0, 0.25, 0.5, 1.0):
        blended = apply_coefficients(blend_with_identity(coeffs, s), image)
        torch.testing.assert_close(blended, s * apply_coefficients(coeffs, image) + (1 - s) * image)
    assert blend_with_identity(coeffs, 1.0) is coeffs


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), float("inf"), None, "strong"])
def test_invalid_strength_is_refused(quick, strength):
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        quick.enhance(np.zeros((8, 8, 3), np.uint8), strength=strength)


# ---------------------------------------------------------------------------------------------- model files
def test_from_pretrained_any_fsspec_uri(generator, tmp_path):
    save_model(generator, "memory://dpe-test/m.safetensors")
    enhancer = Enhancer.from_pretrained("memory://dpe-test/m.safetensors", device="auto", working_size=128)
    assert enhancer.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert enhancer.info is not None and enhancer.info.generator == generator.config
    x = np.random.default_rng(11).random((64, 64, 3)).astype(np.float32)
    local = Enhancer(generator, device="cpu", working_size=128)
    np.testing.assert_allclose(enhancer.enhance(x), local.enhance(x), atol=1e-5)


def _model_files(tmp_path, generator) -> tuple[Path, Path]:
    save_model(generator, str(tmp_path / "m.safetensors"))
    return tmp_path / "m.safetensors", tmp_path / "m.json"


def test_bad_weights_give_clear_errors_naming_the_file(generator, tmp_path):
    weights, sidecar = _model_files(tmp_path, generator)
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps({"state": generator.state_dict()}))
    (tmp_path / "pickled.json").write_bytes(sidecar.read_bytes())
    torch_file = tmp_path / "model.pth"
    torch.save(generator.state_dict(), torch_file)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x13\x37 not a model at all" * 10)
    info = json.loads(sidecar.read_text())
    (tmp_path / "garbage.json").write_text(json.dumps(info | {"weights_sha256": ""}))
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(weights.read_bytes())
    info["generator"]["base_channels"] = 8
    (tmp_path / "wrong.json").write_text(json.dumps(info))
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(weights.read_bytes())
    cases = {
        pickled: "pickled",
        torch_file: "model.pth",
        garbage: "garbage.safetensors",
        wrong: "wrong.safetensors",
        lonely: "lonely.json",
    }
    for path, named in cases.items():
        with pytest.raises(ModelFileError) as err:
            Enhancer.from_pretrained(str(path), device="cpu")
        assert named in str(err.value), str(err.value)
    with pytest.raises(ModelFileError, match="no-such-model"):
        Enhancer.from_pretrained("no-such-model", device="cpu")
