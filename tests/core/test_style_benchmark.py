"""The style benchmark: disjoint S/R/T splits of real photos, a known look as the answer, colour statistics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpe_core.quality.looks import LOOKS
from dpe_core.quality.style import (
    colour_statistics,
    lab_histogram_distance,
    load_pairs,
    pooled_histogram_transfer,
    prepare_style_sets,
    score_against_look,
    split_style_photos,
)


def test_split_is_disjoint_seeded_and_refuses_too_few_photos():
    names = [f"p{i:02d}.jpg" for i in range(20)]
    split = split_style_photos(names, test=6)
    groups = [set(split.source), set(split.reference), set(split.test)]
    assert sum(map(len, groups)) == 20 and set.union(*groups) == set(names)
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(split.test) == 6 and abs(len(split.source) - len(split.reference)) <= 1
    assert split_style_photos(list(reversed(names)), test=6) == split  # a function of the names and the seed
    assert split_style_photos(names, test=6, seed=1) != split
    with pytest.raises(ValueError, match="at least 8"):
        split_style_photos(names[:7], test=6)


def test_balanced_split_gives_s_and_r_the_same_brightness_on_real_photos(testdata):
    from dpe_core.quality.style import mean_luminance

    photos = testdata / "natural"
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    luma = mean_luminance(photos, names)
    shuffled = split_style_photos(names, test=10, seed=2010)
    balanced = split_style_photos(names, test=10, seed=2010, balance=luma)
    assert balanced.test == shuffled.test  # T does not move: scores stay comparable
    assert sorted(balanced.source + balanced.reference) == sorted(shuffled.source + shuffled.reference)

    def gap(split):
        return abs(np.mean([luma[n] for n in split.source]) - np.mean([luma[n] for n in split.reference]))

    # The seeded shuffle left S 0.12 brighter than R on these photos; neighbours dealt apart leave < 0.02.
    assert gap(shuffled) > 0.08 and gap(balanced) < 0.02
    assert abs(len(balanced.source) - len(balanced.reference)) <= 1


def test_matched_split_deals_dark_and_bright_photos_to_both_sides():
    from dpe_core.quality.style import StyleSplit, match_colours, pooled_colour_distance

    def photo(level: int) -> np.ndarray:  # all pixels in one histogram bin per channel
        counts = np.zeros((3, 64), dtype=np.int64)
        counts[:, level] = 100
        return counts

    histograms = {f"dark{i}": photo(5) for i in range(4)} | {f"bright{i}": photo(60) for i in range(4)}
    histograms["t0"] = photo(30)
    unmatched = StyleSplit(source=[f"dark{i}" for i in range(4)], reference=[f"bright{i}" for i in range(4)],
                           test=["t0"])
    matched = match_colours(unmatched, histograms)
    assert matched.test == ["t0"] and len(matched.source) == len(matched.reference) == 4
    assert sorted(matched.source + matched.reference) == sorted(unmatched.source + unmatched.reference)
    assert sum(n.startswith("dark") for n in matched.source) == 2  # half of each kind on each side
    assert pooled_colour_distance([histograms[n] for n in matched.source],
                                  [histograms[n] for n in matched.reference]) < 1e-9
    assert pooled_colour_distance([histograms[n] for n in unmatched.source],
                                  [histograms[n] for n in unmatched.reference]) == pytest.approx(55 / 64)
    assert match_colours(unmatched, histograms) == matched  # deterministic
    with pytest.raises(ValueError, match="dark0"):
        match_colours(unmatched, {k: v for k, v in histograms.items() if k != "dark0"})


def test_opponent_axes_tell_apart_photos_whose_channels_match_one_by_one(tmp_path):
    from dpe_core.quality.style import colour_histograms, pooled_colour_distance

    # Both photos: half of R at 0 and half at 1, the same for G. In one R and G go together (black and yellow),
    # in the other they are opposite (red and green): per channel identical, as colours not at all.
    together = np.zeros((8, 8, 3), dtype=np.uint8)
    together[:4, :, :2] = 255
    opposite = np.zeros((8, 8, 3), dtype=np.uint8)
    opposite[:4, :, 0] = 255
    opposite[4:, :, 1] = 255
    Image.fromarray(together).save(tmp_path / "together.png")
    Image.fromarray(opposite).save(tmp_path / "opposite.png")
    names = ["together.png", "opposite.png"]
    channels = colour_histograms(tmp_path, names, long_side=8)
    both = colour_histograms(tmp_path, names, long_side=8, opponent=True)
    assert channels["together.png"].shape == (3, 64) and both["together.png"].shape == (6, 64)
    assert pooled_colour_distance([channels["together.png"]], [channels["opposite.png"]]) < 1e-9
    assert pooled_colour_distance([both["together.png"]], [both["opposite.png"]]) > 0.05


def test_matched_split_brings_s_and_r_colours_closer_on_real_photos_and_keeps_t(testdata):
    from dpe_core.quality.style import colour_histograms, match_colours, mean_luminance, pooled_colour_distance

    photos = testdata / "natural"
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    balanced = split_style_photos(names, test=10, seed=2010, balance=mean_luminance(photos, names))
    histograms = colour_histograms(photos, names)
    matched = match_colours(balanced, histograms)
    assert matched.test == balanced.test
    assert sorted(matched.source + matched.reference) == sorted(balanced.source + balanced.reference)

    def distance(split):
        return pooled_colour_distance([histograms[n] for n in split.source], [histograms[n] for n in split.reference])

    # Measured: 0.0188 for the brightness-balanced deal, 0.0075 matched.
    assert distance(matched) < 0.6 * distance(balanced)


def test_prepared_sets_carry_the_look_only_where_the_benchmark_says(testdata, tmp_path):
    names = sorted(p.name for p in (testdata / "natural").glob("kpa_*.jpg"))[:7]
    split = split_style_photos(names, test=2)
    folders = prepare_style_sets(testdata / "natural", tmp_path, "warm-contrast", split, long_side=64)
    stems = {role: sorted(p.stem for p in folder.glob("*.png")) for role, folder in folders.items()}
    assert stems["source"] == stems["pair_input"] == stems["pair_target"] == sorted(n[:-4] for n in split.source)
    assert stems["reference"] == sorted(n[:-4] for n in split.reference)
    assert stems["test"] == stems["test_target"] == sorted(n[:-4] for n in split.test)
    pairs = load_pairs(folders["test"], folders["test_target"])
    name, t, target = pairs[0]
    assert max(t.shape[:2]) == 64
    expected = np.asarray(LOOKS["warm-contrast"](Image.open(folders["test"] / name)), dtype=np.float32) / 255
    assert np.abs(target - expected).max() < 1e-6  # the target is exactly L(t)

    identity = score_against_look(pairs, lambda image: image)
    perfect = score_against_look(pairs, lambda image: np.asarray(
        LOOKS["warm-contrast"](Image.fromarray((image * 255 + 0.5).astype(np.uint8))), dtype=np.float32) / 255)
    assert perfect["psnr"] > 60 and perfect["ciede2000"] < 0.5
    assert identity["psnr"] < 35 and identity["ciede2000"] > 1.0  # the look is a real change


def test_colour_statistics_see_a_warm_look_and_the_histogram_distance_orders_sets(testdata):
    from dpe_core.quality.report import load_photos

    names = sorted(p.name for p in (testdata / "natural").glob("kpa_*.jpg"))[:6]
    photos = [image for _, image in load_photos(testdata / "natural", names, max_side=64)]
    warm = [np.asarray(LOOKS["warm-contrast"](Image.fromarray((p * 255 + 0.5).astype(np.uint8))),
                       dtype=np.float32) / 255 for p in photos]
    before, after = colour_statistics(photos), colour_statistics(warm)
    assert after["b_mean"] > before["b_mean"] + 1  # warmer: towards yellow
    assert after["contrast"] > before["contrast"] and after["saturation"] > before["saturation"]
    assert lab_histogram_distance(photos, photos) == pytest.approx(0.0, abs=1e-6)
    half_warm = photos[:3] + warm[3:]
    assert 0 < lab_histogram_distance(photos, half_warm) < lab_histogram_distance(photos, warm) <= 1


def test_pooled_histogram_transfer_learns_a_curve_look_from_the_same_photos_and_less_from_others(testdata):
    """The benchmark's no-training yardstick: matching the pooled colours of S to those of the look on the same
    photos recovers a per-channel curve look on held-out photos; from other photos it gets far less (the content
    gap)."""
    from dpe_core.quality.report import load_photos

    names = sorted(p.name for p in (testdata / "natural").glob("kpa_*.jpg"))[:12]
    photos = [image for _, image in load_photos(testdata / "natural", names, max_side=96)]
    sources, others, held_out = photos[:5], photos[5:10], photos[10:]

    def look(image):  # per-channel curves: a warm cast and a gamma
        return np.clip(image ** np.array([0.8, 1.0, 1.25], dtype=np.float32), 0, 1)

    test_pairs = [(str(i), t, look(t)) for i, t in enumerate(held_out)]
    same = score_against_look(test_pairs, pooled_histogram_transfer(sources, [look(s) for s in sources]))
    other = score_against_look(test_pairs, pooled_histogram_transfer(sources, [look(o) for o in others]))
    identity = score_against_look(test_pairs, lambda image: image)
    assert same["psnr"] > 38 and same["psnr"] > identity["psnr"] + 10, (same, identity)
    # Five other family photos differ in content by more than the look: the same map from them lands far lower.
    assert other["psnr"] < same["psnr"] - 10, (other, same)


def test_extra_photos_join_sources_and_references_never_the_test_set(tmp_path):
    from dpe_core.quality.style import deal_extra_photos, link_photo_pool

    natural, more = tmp_path / "natural", tmp_path / "more"
    for folder, names in ((natural, [f"n{i}.png" for i in range(8)]), (more, [f"m{i}.png" for i in range(5)])):
        folder.mkdir()
        for name in names:
            Image.new("RGB", (4, 4)).save(folder / name)
    (more / "notes.txt").write_text("not a photo")
    pool = tmp_path / "pool"
    names = link_photo_pool([natural, more], pool)
    assert names == [f"n{i}.png" for i in range(8)] + [f"m{i}.png" for i in range(5)]
    assert sorted(p.name for p in pool.iterdir()) == sorted(names)
    assert (pool / "m3.png").resolve() == (more / "m3.png").resolve()

    split = split_style_photos(names[:8], test=2)
    dealt = deal_extra_photos(split, names[8:])
    assert dealt.test == split.test
    assert sorted(dealt.source + dealt.reference) == sorted(split.source + split.reference + names[8:])
    assert len(dealt.source) - len(split.source) == 3 and len(dealt.reference) - len(split.reference) == 2
    with pytest.raises(ValueError, match=split.test[0]):
        deal_extra_photos(split, [split.test[0]])

    (more / "n0.png").write_bytes((natural / "n0.png").read_bytes())  # the same name in two folders
    with pytest.raises(ValueError, match="n0.png"):
        link_photo_pool([natural, more], pool)
    (more / "n0.png").unlink()
    (more / "m4.png").unlink()  # a photo gone: its stale link goes, the others stay
    assert "m4.png" not in link_photo_pool([natural, more], pool)
    assert not (pool / "m4.png").exists() and (pool / "m0.png").is_symlink()


def test_style_benchmark_refuses_a_work_folder_among_the_photos(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    natural = tmp_path / "testdata" / "natural"
    natural.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(natural / "a.png")
    extra = tmp_path / "extra"
    extra.mkdir()
    (tmp_path / "alias").symlink_to(natural)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "style.py"
    env = os.environ | {"DPE_TESTDATA": str(tmp_path / "testdata")}
    for work, more in ((natural / "work", []), (tmp_path / "alias", []), (extra / "w", ["--extra-photos", str(extra)])):
        run = subprocess.run([sys.executable, str(script), "--work", str(work), *more], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "overlaps the photo folder" in run.stderr, run.stderr
    assert sorted(p.name for p in natural.iterdir()) == ["a.png"] and list(extra.iterdir()) == []


def test_a_style_run_trained_elsewhere_scores_here_as_it_scored_there(testdata, tmp_path):
    """The lent-GPU workflow (deploy/offline-gpu/style.sh): train on a prepared data folder with PSNR only, bring
    back the exported model and its history, and score it here with CIEDE2000: the same model, the same T score."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from dataclasses import asdict
    from pathlib import Path

    from dpe_core.quality.style import StyleSplit

    split = StyleSplit(source=["coffee.png", "rocket.jpg", "branches.png"],
                       reference=["chelsea.png", "kpa_pool.jpg", "lomiri_wine.jpg"],
                       test=["astronaut.png", "kpa_spiff.jpg"])
    data = tmp_path / "data"
    prepare_style_sets(testdata / "natural", data, "cool-faded", split, long_side=64)
    (data / "split.json").write_text(json.dumps({"split": "matched", "seed": 1, "long_side": 64} | asdict(split)))
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "style.py"
    common = [sys.executable, str(script), "--look", "cool-faded", "--data", str(data), "--variants", "supervised",
              "--size", "64", "--batch", "2", "--iterations", "8", "--ratio", "2", "--tag", "t"]
    env = os.environ | {"DPE_TESTDATA": str(testdata)}

    def row(output: str) -> list[str]:
        line = next(x for x in output.splitlines() if x.startswith("| supervised |"))
        return [cell.strip() for cell in line.strip("|").split("|")]

    there = subprocess.run([*common, "--work", str(tmp_path / "there"), "--no-colour"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert there.returncode == 0, there.stderr[-2000:]
    run = Path("cool-faded") / "supervised-matched-t"
    back = tmp_path / "here" / run
    shutil.copytree(tmp_path / "there" / run / "model", back / "model")  # what comes back: model and history
    (back / "checkpoints").mkdir()
    shutil.copy(tmp_path / "there" / run / "checkpoints" / "history.jsonl", back / "checkpoints")
    here = subprocess.run([*common, "--work", str(tmp_path / "here"), "--score-only"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr[-2000:]
    assert row(there.stdout)[2] == "-" and float(row(here.stdout)[2]) > 0  # CIEDE2000 only where it can be had
    assert row(here.stdout)[1] == row(there.stdout)[1] and row(here.stdout)[3] == row(there.stdout)[3]
    assert not (back / "checkpoints" / "step-00000004.safetensors").exists()  # scored, not trained again
    nothing = subprocess.run([*common, "--work", str(tmp_path / "empty"), "--score-only"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert nothing.returncode == 1 and "no exported model to score" in nothing.stderr, nothing.stderr[-2000:]
    missing = subprocess.run([*common, "--work", str(tmp_path / "w"), "--data", str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and f"--data {tmp_path}: no readable split.json" in missing.stderr
