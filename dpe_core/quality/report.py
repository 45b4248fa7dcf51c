"""The quality table of `dpe quality` and benchmarks/quality.py: models vs classical baselines on real photos.

For each photo (optionally reduced to a long side): damage it with a fixed-seed draw of a defect family
(A: the training family, ``degradations.py``; B: the independent one, ``family_b.py``), restore it with every
method, and score against the undamaged photo (PSNR dB, SSIM, mean CIEDE2000). The no-harm column scores
method(original) against the original: how much a method changes a photo that needed nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpe_core.io.places import DestinationError, check_apart
from dpe_core.quality.baselines import BASELINES
from dpe_core.quality.degradations import SINGLE_DEFECTS, benchmark_degradations
from dpe_core.quality.family_b import benchmark_defects_b
from dpe_core.quality.metrics import ciede2000, psnr, ssim

Method = Callable[[np.ndarray], np.ndarray]  # HxWx3 float32 in [0,1] -> same
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif")
#: Seeds of the fixed benchmark draws per family (a family's draw i damages photo i of the sorted list).
FAMILY_SEEDS = {"A": 2018, "B": 2019}


def family_defects(family: str, count: int) -> list:
    """The fixed benchmark defects of a family ('A' or 'B'): objects with apply([3,H,W]) -> [3,H,W]."""
    if family == "A":
        return benchmark_degradations(count, seed=FAMILY_SEEDS["A"])
    if family == "B":
        return benchmark_defects_b(count, seed=FAMILY_SEEDS["B"])
    raise ValueError(f"unknown defect family {family!r}; known: A (training family), B (never trained on)")


def to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16 HxWx3 -> float32 in [0,1]."""
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    return pixels.astype(np.float32) / scale


def load_photos(folder: Path, names: Sequence[str] | None = None, max_side: int | None = None
                ) -> list[tuple[str, np.ndarray]]:
    """(file name, HxWx3 float32 RGB in [0,1]) of the photos in a folder (sorted; only `names` when given),
    each reduced to long side max_side (antialiased) when larger. Alpha is dropped, gray becomes RGB."""
    from dpe_core.io import read_photo
    from dpe_core.training.data import resize_long_side

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if names is not None:
        wanted = set(names)
        missing = wanted - {p.name for p in files}
        if missing:
            raise FileNotFoundError(f"{folder}: photos not found: {', '.join(sorted(missing))}")
        files = [p for p in files if p.name in wanted]
    if not files:
        raise FileNotFoundError(f"{folder}: no photos ({', '.join(PHOTO_SUFFIXES)})")
    out = []
    for path in files:
        pixels = to_float(read_photo(str(path)).pixels)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        pixels = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
        if max_side and max(pixels.shape[:2]) > max_side:
            t = resize_long_side(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1), max_side)
            pixels = t.clamp(0, 1).permute(1, 2, 0).contiguous().numpy()
        out.append((path.name, np.ascontiguousarray(pixels)))
    return out


def score(out: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(PSNR dB, SSIM, mean CIEDE2000) of HxWx3 float images in [0,1]."""
    out = np.clip(out, 0, 1).astype(np.float32)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    return psnr(t(out), t(ref)), ssim(out.astype(np.float64), ref.astype(np.float64)), ciede2000(out, ref)


@dataclass
class MethodScores:
    """Per-photo scores of one method: restore = (PSNR, SSIM, dE) on damaged photos; noharm = PSNR on originals."""

    restore: list[tuple[float, float, float]] = field(default_factory=list)
    noharm: list[float] = field(default_factory=list)

    def mean(self) -> dict[str, float]:
        r = np.array(self.restore, dtype=np.float64)
        return {"psnr": float(r[:, 0].mean()), "ssim": float(r[:, 1].mean()), "ciede2000": float(r[:, 2].mean()),
                "noharm_psnr": float(np.mean(self.noharm)) if self.noharm else float("nan")}


@dataclass
class QualityResult:
    """Scores per method for one family, plus what is needed for a contact sheet."""

    family: str
    photos: list[str]
    scores: dict[str, MethodScores]
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)  # damaged / per-method output / original
    seconds: float = 0.0

    def rows(self) -> dict[str, dict[str, float]]:
        return {name: s.mean() for name, s in self.scores.items()}


def evaluate(photos: Sequence[tuple[str, np.ndarray]], family: str, models: dict[str, Method],
             baselines: dict[str, Method] | None = None, keep_samples: int = 4, noharm: bool = True,
             draws: int = 1, first_draw: int = 0) -> QualityResult:
    """Damage each photo with the family's fixed draws, restore it with every baseline and model, score it.

    photos: (name, HxWx3 float32 in [0,1]); models: name -> method. Each photo gets `draws` different fixed
    draws (draw k of photo i is the family's draw k*len(photos) + i, so draws=1 is the single-draw benchmark);
    more draws average out how lucky one draw is for one method. first_draw skips that many draws per photo (fresh
    draws for a confirmation after the first ones were looked at). keep_samples photos keep their first scored
    draw's images for a contact sheet (damaged, each model's output, original). No-harm is scored once per photo.
    Scores are listed draw by draw: entry j is photo j % len(photos).
    """
    if draws < 1 or first_draw < 0:
        raise ValueError(f"draws must be >= 1 and first_draw >= 0, got {draws} and {first_draw}")
    baselines = BASELINES if baselines is None else baselines
    methods = dict(baselines) | dict(models)
    count = len(photos)
    defects = family_defects(family, count * (first_draw + draws))
    scores = {name: MethodScores() for name in methods}
    samples: list[dict[str, np.ndarray]] = []
    started = time.perf_counter()
    for k, i in ((k, i) for k in range(draws) for i in range(count)):
        name, original = photos[i]
        defect = defects[(first_draw + k) * count + i]
        damaged = defect.apply(torch.from_numpy(original).permute(2, 0, 1)).permute(1, 2, 0).contiguous().numpy()
        sample = {"damaged": damaged, "original": original} if k == 0 and len(samples) < keep_samples else None
        for method_name, method in methods.items():
            restored = np.clip(method(damaged), 0, 1).astype(np.float32)
            scores[method_name].restore.append(score(restored, original))
            if noharm and k == 0:
                kept = np.clip(method(original), 0, 1).astype(np.float32)
                scores[method_name].noharm.append(score(kept, original)[0])
            if sample is not None and method_name in models:
                sample[method_name] = restored
        if sample is not None:
            sample["name"] = name  # type: ignore[assignment]
            samples.append(sample)
    return QualityResult(family, [n for n, _ in photos], scores, samples, time.perf_counter() - started)


def evaluate_single_defects(photos: Sequence[tuple[str, np.ndarray]], models: dict[str, Method],
                            baselines: dict[str, Method] | None = None) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) per single defect (rows, ``SINGLE_DEFECTS``) and method (columns): every photo damaged by
    one defect at a time and restored by every baseline and model. photos: (name, HxWx3 float32 in [0,1])."""
    baselines = BASELINES if baselines is None else baselines
    methods = dict(baselines) | dict(models)
    table: dict[str, dict[str, float]] = {}
    for defect_name, defect in SINGLE_DEFECTS.items():
        sums = dict.fromkeys(methods, 0.0)
        for _, original in photos:
            damaged = defect.apply(torch.from_numpy(original).permute(2, 0, 1)).permute(1, 2, 0).contiguous().numpy()
            reference = torch.from_numpy(original).permute(2, 0, 1)
            for method_name, method in methods.items():
                restored = np.clip(method(damaged), 0, 1).astype(np.float32)
                sums[method_name] += psnr(torch.from_numpy(restored).permute(2, 0, 1), reference)
        table[defect_name] = {name: total / len(photos) for name, total in sums.items()}
    return table


def format_defect_table(table: dict[str, dict[str, float]]) -> str:
    """Rows: defects; columns: methods (mean PSNR dB); the best method of each row is marked with *."""
    methods = list(next(iter(table.values())))
    widths = [max(8, len(m)) for m in methods]
    lines = [f"{'defect':<28}" + "".join(f" {m:>{w}}" for m, w in zip(methods, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    for defect, row in table.items():
        best = max(row.values())
        cells = "".join(f" {(f'{v:.2f}' + ('*' if v == best else ' ')):>{w}}"
                        for v, w in zip(row.values(), widths, strict=True))
        lines.append(f"{defect:<28}{cells}")
    return "\n".join(lines)


def format_table(result: QualityResult) -> str:
    """The table as text: one row per method; 'vs best classical' for models (PSNR dB difference)."""
    rows = result.rows()
    classical = {k: v for k, v in rows.items() if k in BASELINES and k != "identity"}
    best = max(classical.values(), key=lambda r: r["psnr"])["psnr"] if classical else float("nan")
    identity = rows.get("identity", {}).get("psnr", float("nan"))
    lines = [f"{'method':<22} {'PSNR dB':>8} {'SSIM':>7} {'dE2000':>7} {'no-harm dB':>10} {'vs identity':>11} "
             f"{'vs best classical':>17}"]
    lines.append("-" * len(lines[0]))
    for name, r in rows.items():
        noharm = "inf" if r["noharm_psnr"] >= 120 else f"{r['noharm_psnr']:.2f}"
        vs_best = f"{r['psnr'] - best:+.2f}" if name not in BASELINES else ""
        lines.append(f"{name:<22} {r['psnr']:>8.2f} {r['ssim']:>7.4f} {r['ciede2000']:>7.2f} {noharm:>10} "
                     f"{r['psnr'] - identity:>+11.2f} {vs_best:>17}")
    return "\n".join(lines)


def _capped(scores: Sequence[float]) -> np.ndarray:
    # An unchanged photo scores inf; 100 dB (far past 8-bit rounding, ~59 dB) stands in for it so the pair counts.
    return np.minimum(np.asarray(scores, dtype=np.float64), 100.0)


def _photo_means(scores: Sequence[float], photos: int) -> np.ndarray:
    """Mean of each photo's draws (entry j is photo j % photos), inf capped as in the paired comparison."""
    capped = _capped(scores)
    if capped.size == 0 or capped.size % photos:
        raise ValueError(f"{capped.size} paired scores do not split into {photos} photos")
    return capped.reshape(-1, photos).mean(axis=0)


def paired_difference(candidate: Sequence[float], reference: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error, count) of candidate - reference over the same pairs (dB).

    Two models scored on the same damaged photos differ far less from pair to pair than either differs from the
    other photos: the standard error of the per-pair difference is the noise a comparison of the two means has.
    """
    if len(candidate) != len(reference) or len(reference) == 0:
        raise ValueError(f"paired scores need the same non-zero count, got {len(candidate)} and {len(reference)}")
    diff = _capped(candidate) - _capped(reference)
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return float(diff.mean()), se, int(diff.size)


def per_photo_difference(candidate: Sequence[float], reference: Sequence[float], photos: int
                         ) -> tuple[float, float, int]:
    """(mean, standard error, photos) of candidate - reference averaged per photo first (dB; entry j is photo
    j % photos). Several draws of one photo are not independent evidence: a model that suits a photo suits most
    of its draws, so this standard error, over photos, is the one to trust when draws > 1."""
    if len(candidate) != len(reference):
        raise ValueError(f"paired scores need the same count, got {len(candidate)} and {len(reference)}")
    means = _photo_means(candidate, photos) - _photo_means(reference, photos)
    se = float(means.std(ddof=1) / np.sqrt(photos)) if photos > 1 else float("nan")
    return float(means.mean()), se, photos


def format_paired(result: QualityResult, models: Sequence[str]) -> str:
    """Each model after the first against the first, pair by pair: PSNR (restore) and no-harm, mean +- SE; with
    several draws per photo also the standard error over photos (per-photo means)."""
    reference = result.scores[models[0]]
    lines = [f"paired against {models[0]} (mean difference +- standard error over the same pairs, dB):"]
    for name in models[1:]:
        scores = result.scores[name]
        ours, theirs = [r[0] for r in scores.restore], [r[0] for r in reference.restore]
        mean, se, count = paired_difference(ours, theirs)
        wins = sum(a[0] > b[0] for a, b in zip(scores.restore, reference.restore, strict=True))
        line = f"  {name}: PSNR {mean:+.3f} +- {se:.3f} over {count} pairs ({wins} better)"
        photos = len(result.photos)
        if count > photos:
            _, photo_se, _ = per_photo_difference(ours, theirs, photos)
            photo_wins = int((_photo_means(ours, photos) > _photo_means(theirs, photos)).sum())
            line += f", +- {photo_se:.3f} over {photos} photos ({photo_wins} better)"
        if scores.noharm and reference.noharm:
            nh_mean, nh_se, nh_count = paired_difference(scores.noharm, reference.noharm)
            line += f"; no-harm {nh_mean:+.3f} +- {nh_se:.3f} over {nh_count} photos"
        lines.append(line)
    return "\n".join(lines)


def format_per_photo(result: QualityResult, models: Sequence[str]) -> str:
    """One row per photo: its mean PSNR over the draws for the first model, and each other model's mean difference
    from it (dB), worst first for the second model: which photos a candidate loses on."""
    photos = len(result.photos)
    means = {name: _photo_means([r[0] for r in result.scores[name].restore], photos) for name in models}
    order = np.argsort(means[models[1]] - means[models[0]]) if len(models) > 1 else range(photos)
    width = max(len(n) for n in result.photos)
    lines = [f"per photo, family {result.family}, mean over draws (dB): column 1 {models[0]}"]
    lines += [f"  column {k + 2}: {name} minus column 1" for k, name in enumerate(models[1:])]
    lines.append(f"{'photo':<{width}} {'1':>7}" + "".join(f" {k + 2:>9}" for k in range(len(models) - 1)))
    for i in order:
        lines.append(f"{result.photos[i]:<{width}} {means[models[0]][i]:>7.2f}"
                     + "".join(f" {means[n][i] - means[models[0]][i]:>+9.2f}" for n in models[1:]))
    return "\n".join(lines)


def contact_sheet(result: QualityResult, path: str | Path, height: int = 200) -> Path:
    """PNG with one row per sample photo: damaged | each model's output | original, labelled."""
    from PIL import Image, ImageDraw

    if not result.samples:
        raise ValueError("no samples kept for a contact sheet")
    columns = ["damaged"] + [k for k in result.samples[0] if k not in ("damaged", "original", "name")] + ["original"]
    tiles = []
    for sample in result.samples:
        row = []
        for col in columns:
            img = Image.fromarray((np.clip(sample[col], 0, 1) * 255 + 0.5).astype(np.uint8))
            w = max(1, round(img.width * height / img.height))
            row.append(img.resize((w, height), Image.Resampling.LANCZOS))
        tiles.append(row)
    col_w = [max(row[i].width for row in tiles) for i in range(len(columns))]
    label_h, pad = 18, 4
    sheet = Image.new("RGB", (sum(col_w) + pad * (len(columns) + 1), label_h + len(tiles) * (height + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    x = pad
    for i, col in enumerate(columns):
        draw.text((x, 3), f"{col} (family {result.family})" if col == "damaged" else col, fill="black")
        x += col_w[i] + pad
    for r, row in enumerate(tiles):
        x, y = pad, label_h + r * (height + pad)
        for i, tile in enumerate(row):
            sheet.paste(tile, (x, y))
            x += col_w[i] + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def model_method(reference: str, mode: str = "full", strength: float | None = None) -> tuple[Method, object]:
    """(method, Enhancer) for a model name or URI; the method enhances float HxWx3 images."""
    from dpe_core.inference import Enhancer

    enhancer = Enhancer.from_pretrained(reference)
    kwargs = {"mode": mode} | ({"strength": strength} if strength is not None else {})
    return (lambda image: np.asarray(enhancer.enhance(image, **kwargs), dtype=np.float32)), enhancer


def default_photos_dir() -> Path:
    root = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parents[3] / "shared" / "testdata"))
    return root / "natural"


def model_test_split(enhancer: object) -> list[str]:
    """The test photos a model's sidecar names (never used in its training or checkpoint choice); [] if none."""
    info = getattr(enhancer, "info", None)
    training = getattr(info, "training", None) or {}
    return list(training.get("test_photos") or [])


def main(argv: list[str] | None = None) -> int:
    """`dpe quality` / `python -m dpe_core.quality`: print the table(s) and write contact sheets."""
    parser = argparse.ArgumentParser(prog="dpe quality", description=__doc__)
    parser.add_argument("--photos", type=Path, default=None, help="folder of undamaged photos (default: the "
                        "shared natural photos, restricted to the first model's test split)")
    parser.add_argument("--model", action="append", default=[], help="model name or URI (repeatable); "
                        "default: the bundled 'default'")
    parser.add_argument("--family", action="append", choices=["A", "B"], default=[], help="defect family "
                        "(repeatable; default both)")
    parser.add_argument("--max-side", type=int, default=None, help="reduce photos to this long side first")
    parser.add_argument("--all-photos", action="store_true", help="every photo of the folder, not the test split")
    parser.add_argument("--names", default=None, help="comma-separated file names to use (overrides the split)")
    parser.add_argument("--mode", default="full", choices=["full", "paper", "tiled"])
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for contact sheets (PNG)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--draws", type=int, default=1, help="fixed defect draws per photo (1: the single-draw "
                        "benchmark; more average out lucky draws)")
    parser.add_argument("--skip-draws", type=int, default=0, metavar="K",
                        help="start at each photo's draw K+1: fresh draws to confirm a comparison that was "
                             "looked at on the first K")
    parser.add_argument("--per-photo", action="store_true",
                        help="also each photo's mean over its draws and each model's difference from the first "
                             "model's, worst first: which photos a candidate loses on")
    parser.add_argument("--per-defect", action="store_true", help="also a table of single defects (one at a time, "
                        "both directions): which ones each method corrects")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    if args.out is not None:
        try:
            check_apart(str(args.out), [str(args.photos or default_photos_dir())], "contact-sheet folder (--out)")
        except DestinationError as exc:
            print(f"dpe quality: {exc}", file=sys.stderr)
            return 2
    models: dict[str, Method] = {}
    split: list[str] = []
    for reference in args.model or ["default"]:
        try:
            method, enhancer = model_method(reference, args.mode, args.strength)
        except Exception as exc:  # a bad name or file is a usage error
            print(f"dpe quality: model {reference!r} could not be loaded: {exc}", file=sys.stderr)
            return 2
        models[f"model {reference}"] = method
        split = split or model_test_split(enhancer)
    folder = args.photos or default_photos_dir()
    names = None if args.all_photos or not split or args.photos is not None else split
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
    try:
        photos = load_photos(folder, names, args.max_side)
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"dpe quality: {exc}", file=sys.stderr)
        return 2
    from dpe_core.sysinfo import machine

    families = args.family or ["A", "B"]
    print(f"machine: {machine()}")
    print(f"photos: {len(photos)} from {folder}" + (" (the model's test split)" if names and not args.names else "")
          + (f", long side <= {args.max_side}" if args.max_side else ", full resolution")
          + f"; mode {args.mode}" + (f", strength {args.strength}" if args.strength is not None else "")
          + (f"; {args.draws} defect draws per photo" if args.draws > 1 else "")
          + (f" (draws {args.skip_draws + 1}-{args.skip_draws + args.draws})" if args.skip_draws else ""))
    noharm: dict[str, list[float]] | None = None  # the same for every family: scored once
    for family in families:
        result = evaluate(photos, family, models, noharm=noharm is None, draws=max(1, args.draws),
                          first_draw=max(0, args.skip_draws))
        if noharm is None:
            noharm = {name: scores.noharm for name, scores in result.scores.items()}
        else:
            for name, scores in result.scores.items():
                scores.noharm = noharm[name]
        print(f"\nfamily {family} ({'training family' if family == 'A' else 'never trained on'}), "
              f"{result.seconds:.0f} s:")
        print(format_table(result))
        if len(models) > 1:
            print(format_paired(result, list(models)))
        if args.per_photo:
            print(format_per_photo(result, list(models)))
        if args.out:
            sheet = contact_sheet(result, args.out / f"contact-family-{family}.png")
            print(f"contact sheet: {sheet}")
    if args.per_defect:
        print("\nsingle defects (family A's kinds, one at a time), mean PSNR dB against the original:")
        print(format_defect_table(evaluate_single_defects(photos, models)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
