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


def test_family_a_goes_both_ways_and_has_clean_draws():
    import random

    from dpe_core.quality.degradations import random_degradation

    rng = random.Random(0)
    draws = [random_degradation(rng, clean_share=0.2) for _ in range(2000)]
    clean = sum(d.is_identity for d in draws) / len(draws)
    assert 0.15 < clean < 0.25
    damaged = [d for d in draws if not d.is_identity]
    for attr, neutral in (("exposure_stops", 0.0), ("gamma", 1.0), ("contrast", 1.0), ("saturation", 1.0),
                          ("black_lift", 0.0)):
        values = [getattr(d, attr) for d in damaged]
        assert min(values) < neutral < max(values), attr  # real defects go both ways
    reds = [d.white_balance[0] for d in damaged]
    greens = [d.white_balance[1] for d in damaged]
    assert min(reds) < 1 < max(reds) and min(greens) < 1 < max(greens)  # warm/cool and green/magenta casts
    assert all(d == random_degradation(random.Random(0), clean_share=0.2) for d in draws[:1])


def test_family_a_over_exposure_rolls_off_then_clips():
    ramp = torch.linspace(0, 1, 101).view(1, 1, 101).expand(3, 4, 101)
    out = Degradation(exposure_stops=1.0).apply(ramp)[0, 0]
    assert torch.all(out[1:] >= out[:-1] - 1e-6)  # monotone
    assert out[30] == pytest.approx(0.6, abs=1e-5)  # below the knee: plain gain
    assert 0.8 < out[45] < 1.0  # the shoulder compresses instead of clipping at once
    assert out[-1] == pytest.approx(1.0, abs=1e-3)


def test_family_b_is_independent_fixed_and_damaging():
    from dpe_core.quality.family_b import LinearLightDefect, benchmark_defects_b, linear_to_srgb, srgb_to_linear

    v = torch.linspace(0, 1, 256)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(v)), v, atol=1e-5)
    image = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    assert torch.allclose(LinearLightDefect().apply(image), image, atol=1e-5)
    defects = benchmark_defects_b(40)
    assert defects == benchmark_defects_b(40) and defects != benchmark_defects_b(40, seed=7)
    assert min(d.ev for d in defects) < 0 < max(d.ev for d in defects)
    assert min(d.warm for d in defects) < 0 < max(d.warm for d in defects)
    assert all(psnr(d.apply(image), image) < 45 for d in defects)  # every draw damages the photo
    # Grey stays grey under a pure exposure change; a warm shift makes red exceed blue.
    grey = torch.full((3, 4, 4), 0.4)
    brighter = LinearLightDefect(ev=1.0).apply(grey)
    assert torch.allclose(brighter[0], brighter[2], atol=1e-6) and brighter.mean() > 0.4
    warm = LinearLightDefect(warm=0.3).apply(grey)
    assert warm[0].mean() > warm[2].mean()


def test_quality_table_scores_methods_and_writes_a_contact_sheet(tmp_path):
    from PIL import Image

    from dpe_core.quality.report import contact_sheet, evaluate, format_table

    rng = np.random.default_rng(5)
    base = np.clip(rng.random((48, 64, 3)).astype(np.float32) * 0.6 + 0.2, 0, 1)
    photos = [(f"p{i}.png", np.clip(base * (0.8 + 0.1 * i), 0, 1).astype(np.float32)) for i in range(3)]
    result = evaluate(photos, "B", {"model same": lambda image: image}, keep_samples=2)
    rows = result.rows()
    assert set(rows) >= {"identity", "autocontrast", "hist-eq", "CLAHE", "gray-world", "model same"}
    # A model that changes nothing scores exactly like the identity row and is harmless.
    assert rows["model same"]["psnr"] == pytest.approx(rows["identity"]["psnr"])
    assert rows["model same"]["noharm_psnr"] >= 120 and rows["hist-eq"]["noharm_psnr"] < 40
    text = format_table(result)
    assert "model same" in text and "vs best classical" in text
    sheet = contact_sheet(result, tmp_path / "sheet.png", height=40)
    with Image.open(sheet) as img:
        assert img.height > 2 * 40 and img.width > 3 * 40


def test_several_draws_per_photo_extend_the_single_draw_benchmark():
    from dpe_core.quality.report import evaluate

    rng = np.random.default_rng(6)
    base = np.clip(rng.random((32, 40, 3)).astype(np.float32) * 0.6 + 0.2, 0, 1)
    photos = [(f"p{i}.png", np.clip(base * (0.7 + 0.2 * i), 0, 1).astype(np.float32)) for i in range(2)]
    model = {"model same": lambda image: image}
    one = evaluate(photos, "A", model, keep_samples=0)
    three = evaluate(photos, "A", model, keep_samples=0, draws=3)
    restore_one = one.scores["identity"].restore
    restore_three = three.scores["identity"].restore
    assert len(restore_three) == 6 and restore_three[:2] == restore_one  # draw 0 is the single-draw benchmark
    assert len({round(r[0], 6) for r in restore_three}) == 6  # every photo x draw is a different defect
    assert len(three.scores["identity"].noharm) == 2  # no-harm once per photo, not per draw
    with pytest.raises(ValueError, match="draws"):
        evaluate(photos, "A", model, draws=0)
    fresh = evaluate(photos, "A", model, keep_samples=0, draws=2, first_draw=1)  # draws 2-3: none seen before
    assert fresh.scores["identity"].restore == restore_three[2:]


def test_per_photo_table_lists_where_a_candidate_loses_worst_first():
    from dpe_core.quality.report import evaluate, format_per_photo

    rng = np.random.default_rng(8)
    base = np.clip(rng.random((24, 32, 3)).astype(np.float32) * 0.6 + 0.2, 0, 1)
    photos = [(f"p{i}.png", np.clip(base * (0.6 + 0.2 * i), 0, 1).astype(np.float32)) for i in range(3)]
    models = {"model same": lambda image: image, "model grey": lambda image: image * 0.5 + 0.25}
    result = evaluate(photos, "A", models, keep_samples=0, draws=2)
    rows = format_per_photo(result, list(models)).splitlines()[3:]
    same = np.asarray([r[0] for r in result.scores["model same"].restore]).reshape(2, 3).mean(0)
    grey = np.asarray([r[0] for r in result.scores["model grey"].restore]).reshape(2, 3).mean(0)
    worst_first = [f"p{i}.png" for i in np.argsort(grey - same)]
    assert [row.split()[0] for row in rows] == worst_first
    assert [float(row.split()[2]) for row in rows] == pytest.approx(sorted(grey - same), abs=0.006)


def test_per_photo_error_does_not_count_draws_of_one_photo_as_independent():
    from dpe_core.quality.report import paired_difference, per_photo_difference

    # Photo 0 gains 1 dB on every draw, photo 1 loses 0.6 dB on every draw (entry j is photo j % 2).
    gains = np.array([1.0, -0.6] * 8)
    reference = np.full(16, 25.0)
    pair_mean, pair_se, _ = paired_difference(reference + gains, reference)
    photo_mean, photo_se, photos = per_photo_difference(reference + gains, reference, 2)
    assert photos == 2 and photo_mean == pytest.approx(pair_mean) == pytest.approx(0.2)
    assert pair_se < 0.25 < photo_se == pytest.approx(0.8)  # 16 pairs look decisive; 2 photos are not
    with pytest.raises(ValueError, match="split into 3 photos"):
        per_photo_difference(reference, reference, 3)


def test_paired_comparison_separates_a_small_steady_gain_from_noise():
    from dpe_core.quality.report import evaluate, format_paired, paired_difference

    # Per pair, a steady +0.1 dB beside pair-to-pair swings of +-3 dB: the paired error sees through the swings.
    swings = np.array([3.0, -3.0, 2.0, -2.0, 1.0, -1.0] * 5)
    reference = 25 + swings
    mean, se, count = paired_difference(reference + 0.1, reference)
    assert count == 30 and mean == pytest.approx(0.1) and se == pytest.approx(0.0, abs=1e-9)
    noisy = reference + 0.1 + np.array([0.2, -0.2] * 15)
    mean, se, _ = paired_difference(noisy, reference)
    assert mean == pytest.approx(0.1) and 0.03 < se < 0.05  # 0.2 / sqrt(30), with the n-1 correction
    assert paired_difference([np.inf, 30.0], [np.inf, 29.0])[:2] == pytest.approx((0.5, 0.5))  # inf: unchanged
    with pytest.raises(ValueError, match="same"):
        paired_difference([1.0, 2.0], [1.0])

    rng = np.random.default_rng(7)
    base = np.clip(rng.random((24, 32, 3)).astype(np.float32) * 0.6 + 0.2, 0, 1)
    photos = [(f"p{i}.png", np.clip(base * (0.8 + 0.1 * i), 0, 1).astype(np.float32)) for i in range(3)]
    models = {"model same": lambda image: image, "model grey": lambda image: image * 0.5 + 0.25}
    result = evaluate(photos, "A", models, keep_samples=0, draws=2)
    text = format_paired(result, list(models))
    assert "model grey" in text and "over 6 pairs" in text and "no-harm -" in text and "over 3 photos" in text
    assert text.count("over 3 photos") == 2  # with 2 draws per photo, the error over photos is printed too
    grey = [r[0] for r in result.scores["model grey"].restore]
    same = [r[0] for r in result.scores["model same"].restore]
    assert f"{np.mean(np.subtract(grey, same)):+.3f}" in text


def test_single_defect_table_shows_which_defects_each_method_undoes(testdata):
    from dpe_core.quality.degradations import SINGLE_DEFECTS
    from dpe_core.quality.report import evaluate_single_defects, format_defect_table, load_photos

    photos = load_photos(testdata / "natural", ["kpa_pool.jpg", "china.jpg"], max_side=128)
    undo_warm = {"undo warm": lambda image: np.clip(image / np.array([1.15, 1.0, 0.85], np.float32), 0, 1)}
    table = evaluate_single_defects(photos, undo_warm)
    assert list(table) == list(SINGLE_DEFECTS)  # every defect, in both directions, one row each
    # A method that exactly inverts one defect wins that row and loses where it adds a cast of its own.
    assert table["warm cast"]["undo warm"] > table["warm cast"]["identity"] + 10
    assert table["saturation 0.6 (dull)"]["undo warm"] < table["saturation 0.6 (dull)"]["identity"]
    # Per-channel stretching undoes a linear exposure loss on full-range photos; gray-world does not.
    row = table["exposure -1 stop"]
    assert row["autocontrast"] > row["identity"] + 8 and row["gray-world"] < row["identity"] + 1
    text = format_defect_table(table)
    assert "exposure -1 stop" in text and "undo warm" in text and "*" in text
