"""`dpe quality`: the table a user reads to decide whether a model is worth running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DPE = str(Path(sys.executable).parent / "dpe")


def _photos(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(n):
        yy, xx = np.mgrid[0:72, 0:96] / 96.0
        img = np.stack([yy, xx, (yy + xx) / 2], axis=-1) * 0.6 + 0.2 + rng.random((72, 96, 3)) * 0.05
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def test_quality_prints_baselines_model_and_no_harm_and_writes_contact_sheets(tmp_path):
    photos = _photos(tmp_path / "photos")
    done = subprocess.run([DPE, "quality", "--photos", str(photos), "--out", str(tmp_path / "sheets")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for family in ("family A", "family B"):
        assert family in done.stdout
    for row in ("identity", "autocontrast", "hist-eq", "CLAHE", "gray-world", "model default"):
        assert done.stdout.count(row) >= 2, row  # one row per family
    assert "no-harm dB" in done.stdout and "machine:" in done.stdout
    for family in "AB":
        with Image.open(tmp_path / "sheets" / f"contact-family-{family}.png") as sheet:
            assert sheet.width > 100 and sheet.height > 100


def test_quality_usage_errors_exit_2(tmp_path):
    missing = subprocess.run([DPE, "quality", "--photos", str(tmp_path / "nowhere")], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    bad_model = subprocess.run([DPE, "quality", "--photos", str(_photos(tmp_path / "p", 1)), "--model",
                                str(tmp_path / "no-such-model")], capture_output=True, text=True, timeout=300)
    assert bad_model.returncode == 2 and "no-such-model" in bad_model.stderr
    bad_family = subprocess.run([DPE, "quality", "--family", "C"], capture_output=True, text=True, timeout=60)
    assert bad_family.returncode == 2
