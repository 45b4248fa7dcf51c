"""The copy-free full-resolution path: the fused C apply loop, RGBX decode and encode give the same results as the
plain paths (pixels equal, JPEG bytes equal, apply within one 8/16-bit step of the eager kernel)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dpe_core import guided_native
from dpe_core.guided import EAGER, PixelSource, StripKernel, apply_affine
from dpe_core.io import decode_photo, encode_photo
from dpe_core.io.rgbx import to_pil
from dpe_core.rgbx_view import rgbx_base

CPU = torch.device("cpu")
needs_cc = pytest.mark.skipif(guided_native.compiler() is None, reason="no C compiler: the fused loop cannot build")


def _coeffs(seed: int = 0, h: int = 23, w: int = 37) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(12, h, w, generator=g) * 0.2
    c[[0, 5, 10]] += 1.0
    return c


def _pixels(dtype, shape=(190, 333, 3), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, shape, dtype=dtype)


@needs_cc
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_fused_loop_matches_eager_kernel(dtype):
    x = _pixels(dtype)
    c = _coeffs()
    eager = apply_affine(PixelSource(x), c, CPU, strip_pixels=4096, kernel=EAGER)
    fused = apply_affine(PixelSource(x), c, CPU, strip_pixels=4096, kernel=StripKernel(compiled=True))
    assert fused.shape == eager.shape and fused.dtype == eager.dtype
    step = {np.uint8: 1, np.uint16: 1, np.float32: 1e-5}[dtype]
    assert np.abs(fused.astype(np.float64) - eager.astype(np.float64)).max() <= step


@needs_cc
def test_fused_loop_reads_rgbx_views_and_planar_tensors():
    c = _coeffs(3)
    buf = _pixels(np.uint8, (120, 250, 4), seed=4)
    view = buf[..., :3]
    plain = np.ascontiguousarray(view)
    kernel = StripKernel(compiled=True)
    from_view = apply_affine(PixelSource(view), c, CPU, kernel=kernel)
    assert np.array_equal(from_view, apply_affine(PixelSource(plain), c, CPU, kernel=kernel))
    assert rgbx_base(from_view) is not None  # 8-bit output: the RGB view of an RGBX buffer (Pillow maps it)
    t = torch.from_numpy(_pixels(np.float32, (3, 120, 250), seed=5))
    fused = apply_affine(PixelSource(t), c, CPU, kernel=kernel)
    eager = apply_affine(PixelSource(t), c, CPU, kernel=EAGER)
    assert isinstance(fused, torch.Tensor) and (fused - eager).abs().max() <= 1e-5


@needs_cc
def test_fused_loop_does_not_depend_on_the_strip_size():
    x = _pixels(np.uint8, (301, 97, 3), seed=6)
    c = _coeffs(7, 9, 11)
    kernel = StripKernel(compiled=True)
    ref = apply_affine(PixelSource(x), c, CPU, strip_pixels=97, kernel=kernel)  # one row per strip
    assert np.array_equal(apply_affine(PixelSource(x), c, CPU, strip_pixels=1 << 20, kernel=kernel), ref)


def _jpeg(size=(321, 200), quality=92) -> bytes:
    rng = np.random.default_rng(8)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_rgbx_decode_gives_pillows_pixels():
    data = _jpeg()
    photo = decode_photo(data, "x.jpg")
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(im.convert("RGB"))
    assert rgbx_base(photo.pixels) is not None  # decoded in place, no repacking copy
    assert np.array_equal(photo.pixels, expected)


def test_rgbx_encode_writes_the_same_bytes_as_a_plain_array():
    photo = decode_photo(_jpeg(), "x.jpg")
    plain = photo.with_pixels(np.ascontiguousarray(photo.pixels))
    assert rgbx_base(plain.pixels) is None
    assert encode_photo(photo.with_pixels(photo.pixels)) == encode_photo(plain)
    img = to_pil(photo.pixels)
    assert img.mode == "RGBX" and np.array_equal(np.asarray(img.convert("RGB")), photo.pixels)


def test_pickled_photos_keep_their_rgbx_buffer_out_of_band():
    import pickle

    photo = decode_photo(_jpeg(), "x.jpg")
    buffers: list[pickle.PickleBuffer] = []
    state = pickle.dumps(photo, protocol=5, buffer_callback=buffers.append)
    assert [b.raw().nbytes for b in buffers] == [photo.pixels.shape[0] * photo.pixels.shape[1] * 4]
    back = pickle.loads(state, buffers=buffers)
    assert np.array_equal(back.pixels, photo.pixels) and rgbx_base(back.pixels) is not None
    assert back.exif == photo.exif and back.name == photo.name and back.carry == photo.carry
    assert rgbx_base(np.zeros((4, 5, 4), np.uint8)[:, :, 1:]) is None  # the 4th byte would lie past the memory


def test_recycled_buffers_return_only_when_every_view_is_gone():
    from dpe_core import rgbx_view

    first = rgbx_view.recycled_empty((1200, 2000, 4))  # 9.6 MB: from the pool
    address = first.ctypes.data
    view = first[..., :3]
    view[0, 0] = (1, 2, 3)
    del first
    assert rgbx_base(view) is not None
    other = rgbx_view.recycled_empty((1200, 2000, 4))
    assert other.ctypes.data != address  # the view still uses the first buffer
    assert tuple(view[0, 0]) == (1, 2, 3)
    del view
    again = rgbx_view.recycled_empty((1200, 2000, 4))
    assert again.ctypes.data == address  # released with its last view, then reused
    small = rgbx_view.recycled_empty((10, 10, 4))
    assert small.shape == (10, 10, 4) and small.dtype == np.uint8
