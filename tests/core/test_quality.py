"""Degradation family, metrics and classical baselines used by the quality benchmark and the model card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpe_core.quality.baselines import BASELINES, autocontrast, gray_world
from dpe_core.quality.degradations import Degradation, benchmark_degradations
from dpe_core.quality.metrics import ciede2000, psnr, ssim


def test_neutral_degradation_is_identity_and_each_parameter_acts():
    image = torch.rand(3, 16, 16) * 0.8 + 0.1
    assert torch.allclose(Degradation().apply(image), image, atol=1e-5)
    assert Degradation(exposure_stops=0.5).apply(image).mean() > image.mean()
    assert Degradation(gamma=1.5).apply(image).mean() < image.mean()
    assert Degradation(contrast=0.5).apply(image).std() < image.std()
    darker_blue = Degradation(white_balance=(1.0, 1.0, 0.7)).apply(image)
    assert darker_blue[2].mean() < image[2].mean() and torch.allclose(darker_blue[1], image[1], atol=1e-5)
    assert Degradation(black_lift=0.1).apply(image).min() >= 0.1 - 1e-6


def test_benchmark_degradations_are_fixed_by_seed():
    assert benchmark_degradations(5, seed=1) == benchmark_degradations(5, seed=1)
    assert benchmark_degradations(5, seed=1) != benchmark_degradations(5, seed=2)


def test_psnr_ssim_ciede_on_known_differences():
    a = torch.full((3, 8, 8), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 (float32 inputs)
    img = np.random.default_rng(0).random((32, 32, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    assert ciede2000(img, img) == pytest.approx(0.0, abs=1e-9)
    assert ciede2000(img, np.clip(img * 0.8, 0, 1)) > 1.0


def test_baselines_keep_shape_and_range_and_do_their_job():
    rng = np.random.default_rng(1)
    image = rng.random((40, 30, 3)) * 0.5 + 0.2
    image[..., 2] *= 0.6  # a blue deficit
    for name, fn in BASELINES.items():
        out = fn(image)
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1, name
    balanced = gray_world(image).reshape(-1, 3).mean(0)
    assert np.ptp(balanced) < 1e-6
    stretched = autocontrast(image)
    assert stretched.min() == 0 and stretched.max() == 1
