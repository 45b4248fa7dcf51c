"""CPU bf16: the auto gate turns bf16 on only when real photos' 8-bit outputs stay within bf16_min_psnr of fp32,
and every switch (Enhancer option, DPE_BF16) turns it off."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpe_core import inference
from dpe_core.inference import Enhancer
from dpe_core.inference_options import BF16_MIN_PSNR, bf16_setting, cpu_has_native_bf16, psnr_8bit

TESTDATA = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parents[3] / "shared" / "testdata"))
native = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("DPE_BF16", raising=False)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    folder = TESTDATA / "natural"
    files = sorted(folder.glob("*.jpg"))[:3] if folder.is_dir() else []
    if len(files) < 2:
        pytest.skip(f"real photos not found under {folder} (set DPE_TESTDATA)")
    out = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((256, 256), Image.Resampling.BOX)
            out.append(np.asarray(im).copy())
    return out


def _enhancer(**options) -> Enhancer:
    return Enhancer.from_pretrained("default", device="cpu", compile_apply="off", **options)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr_8bit(torch.from_numpy(a).float() / 255, torch.from_numpy(b).float() / 255)


@native
def test_auto_follows_the_measured_psnr_on_real_photos(photos):
    fp32, bf16, auto = _enhancer(bf16="off"), _enhancer(bf16="on"), _enhancer(bf16="auto")
    assert auto.bf16.checking  # nothing decided before an image was seen
    measured = []
    for photo in photos[:2]:
        reference = fp32.enhance(photo, "paper")
        measured.append(_psnr(reference, bf16.enhance(photo, "paper")))
        assert np.array_equal(auto.enhance(photo, "paper"), reference)  # while checking: the fp32 result
    verdict = auto.bf16.describe()
    assert verdict["checked"] == 2 and verdict["active"] is not None
    assert verdict["active"] == (verdict["psnr_db"] >= BF16_MIN_PSNR)
    # The gate's own figure (padded working square) and the outputs' (cropped) agree on the side of the threshold.
    assert verdict["active"] == (min(measured) >= BF16_MIN_PSNR)
    after = auto.enhance(photos[2], "paper")
    expected = (bf16 if verdict["active"] else fp32).enhance(photos[2], "paper")
    assert np.array_equal(after, expected)


@native
def test_the_threshold_gates_bf16(photos):
    strict = _enhancer(bf16="auto", bf16_min_psnr=1000.0)  # no real photo reaches it: stays fp32
    lenient = _enhancer(bf16="auto", bf16_min_psnr=0.0)  # every photo does: bf16 after two images
    fp32, bf16 = _enhancer(bf16="off"), _enhancer(bf16="on")
    for photo in photos[:2]:
        strict.enhance(photo, "paper")
        lenient.enhance(photo, "paper")
    assert strict.bf16.active is False and strict.bf16.describe()["checked"] == 1  # one failing image decides
    assert lenient.bf16.active is True
    assert np.array_equal(strict.enhance(photos[2], "paper"), fp32.enhance(photos[2], "paper"))
    assert np.array_equal(lenient.enhance(photos[2], "paper"), bf16.enhance(photos[2], "paper"))


def test_switches_turn_bf16_off(monkeypatch, photos):
    off = _enhancer(bf16="off")
    off.enhance(photos[0], "paper")
    assert off.bf16.active is False and off.amp_dtype is None
    monkeypatch.setenv("DPE_BF16", "off")
    assert bf16_setting(None) == "off" and _enhancer().bf16.active is False
    monkeypatch.setenv("DPE_BF16", "0")
    assert bf16_setting(None) == "off"
    monkeypatch.setenv("DPE_BF16", "sometimes")
    with pytest.raises(ValueError, match="DPE_BF16"):
        bf16_setting(None)


def test_auto_without_native_bf16_stays_fp32(monkeypatch, photos):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    auto = _enhancer(bf16="auto")
    assert auto.bf16.active is False
    auto.enhance(photos[0], "paper")
    assert auto.amp_dtype is None and auto.bf16.describe()["checked"] == 0
