"""Bundled look models: `look-<name>` applied to a photo it never saw comes closer to LOOKS[name](photo) than the
photo itself does (the claim its card makes, checkable by anyone on their own photos)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpe_core.inference import Enhancer
from dpe_core.nn.modelfile import BUNDLED_MODELS, ModelInfo
from dpe_core.quality.looks import LOOKS

LOOK_MODELS = sorted(p.name for p in BUNDLED_MODELS.glob("look-*") if (p / "model.json").is_file())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) + 1e-12))


def test_a_look_model_is_bundled():
    assert "look-warm-contrast" in LOOK_MODELS


@pytest.mark.parametrize("name", LOOK_MODELS)
def test_look_model_moves_held_out_photos_towards_its_look(name, testdata):
    info = ModelInfo.model_validate_json((BUNDLED_MODELS / name / "model.json").read_text())
    look = info.training["look"]
    assert name == f"look-{look}" and look in LOOKS
    test_photos = info.training["test_photos"]
    assert len(test_photos) >= 5 and not set(test_photos) & set(info.training["source_photos"])
    enhancer = Enhancer.from_pretrained(name, device="cpu")
    gains = []
    for photo in test_photos:
        with Image.open(testdata / "natural" / photo) as im:
            im.draft("RGB", (256, 256))
            rgb = im.convert("RGB")
            rgb.thumbnail((256, 256), Image.Resampling.BOX)
        target = np.asarray(LOOKS[look](rgb), dtype=np.float32) / 255.0
        original = np.asarray(rgb, dtype=np.float32) / 255.0
        out = np.asarray(enhancer.enhance(original, mode="full"), dtype=np.float32)
        gains.append(_psnr(out, target) - _psnr(original, target))
    print(f"{name}: gain over the identity per photo {np.round(gains, 2).tolist()}")
    # The card's measured gain on these photos is +3.1 dB; most photos must move towards the look.
    assert np.mean(gains) > 2.0 and np.mean(np.array(gains) > 0) >= 0.8
