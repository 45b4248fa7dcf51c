"""Quality benchmark at full resolution: real photos, fixed-seed degradations, model vs classical baselines.

    python benchmarks/quality.py [--model default] [--photos DIR] [--holdout-of MODEL] [--max-side N]

For each photo: degrade it at full resolution with the documented family (dpe_core.quality.degradations,
fixed seed), enhance the degraded photo with the model (mode full) and with each classical baseline, and
score against the original at full resolution: PSNR (dB, higher is better), SSIM, mean CIEDE2000 (lower is
better). A second table checks that already-good photos are not damaged: enhance(original) vs original.
By default the photos are the model's held-out photos (named in its sidecar) from ../shared/testdata/natural.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from dpe_core.inference import Enhancer  # noqa: E402
from dpe_core.io import read_photo  # noqa: E402
from dpe_core.quality.baselines import BASELINES  # noqa: E402
from dpe_core.quality.degradations import benchmark_degradations  # noqa: E402
from dpe_core.quality.metrics import ciede2000, psnr, ssim  # noqa: E402
from dpe_core.training.data import resize_long_side  # noqa: E402

DEFAULT_PHOTOS = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


def to_float(pixels: np.ndarray) -> np.ndarray:
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    return pixels.astype(np.float32) / scale


def score(out: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    return psnr(t(out), t(ref)), ssim(out.astype(np.float64), ref.astype(np.float64)), ciede2000(out, ref)


def table(title: str, rows: dict[str, list[tuple[float, float, float]]]) -> None:
    print(f"\n{title}")
    header = f"{'method':>14} {'PSNR dB':>8} {'SSIM':>7} {'dE2000':>7} {'vs identity dB':>15}"
    print(header)
    print("-" * len(header))
    base = np.mean([r[0] for r in rows["identity"]])
    for name, values in rows.items():
        p, s, e = (float(np.mean([v[i] for v in values])) for i in range(3))
        # psnr() caps identical images at 120 dB; print that as infinite, not as a number to compare.
        shown = f"{'inf':>8}" if p >= 120 else f"{p:>8.2f}"
        delta = f"{'':>15}" if p >= 120 or base >= 120 else f"{p - base:>+15.2f}"
        print(f"{name:>14} {shown} {s:>7.4f} {e:>7.2f} {delta}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS / "natural")
    parser.add_argument("--all-photos", action="store_true", help="use every photo, not just the held-out ones")
    parser.add_argument("--max-side", type=int, default=None, help="downscale photos first (quick runs)")
    parser.add_argument("--seed", type=int, default=2018)
    args = parser.parse_args()

    enhancer = Enhancer.from_pretrained(args.model)
    held_out = (enhancer.info.training.get("holdout_photos") if enhancer.info else None) or []
    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if held_out and not args.all_photos:
        files = [p for p in files if p.name in set(held_out)]
    degradations = benchmark_degradations(len(files), seed=args.seed)
    print(f"machine: {machine()}")
    print(
        f"model: {args.model} ({enhancer.info.name if enhancer.info else '?'} v"
        f"{enhancer.info.version if enhancer.info else '?'}), {len(files)} photos from {args.photos}"
        f"{' (held out from training)' if held_out and not args.all_photos else ''}, seed {args.seed}"
    )
    restore: dict[str, list] = {"model (full)": []} | {name: [] for name in BASELINES}
    keep: dict[str, list] = {"model (full)": []} | {name: [] for name in BASELINES}
    pixels = 0
    started = time.perf_counter()
    for path, degradation in zip(files, degradations, strict=True):
        original = to_float(read_photo(str(path)).pixels)
        if args.max_side and max(original.shape[:2]) > args.max_side:
            tensor = resize_long_side(torch.from_numpy(original).permute(2, 0, 1), args.max_side)
            original = tensor.clamp(0, 1).permute(1, 2, 0).contiguous().numpy()
        pixels += original.shape[0] * original.shape[1]
        degraded = degradation.apply(torch.from_numpy(original).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        for rows, source in ((restore, degraded), (keep, original)):
            rows["model (full)"].append(score(np.clip(enhancer.enhance(source, mode="full"), 0, 1), original))
            for name, fn in BASELINES.items():
                rows[name].append(score(fn(source).astype(np.float32), original))
        print(f"  {path.name}: {original.shape[1]}x{original.shape[0]}, {degradation}", flush=True)
    table(
        "Restoring degraded photos (enhance(degrade(photo)) vs photo, full resolution):",
        {"identity": restore["identity"]} | {k: v for k, v in restore.items() if k != "identity"},
    )
    table(
        "Already-good photos (enhance(photo) vs photo): damage check",
        {"identity": keep["identity"]} | {k: v for k, v in keep.items() if k != "identity"},
    )
    print(
        f"\n{len(files)} photos, {pixels / len(files) / 1e6:.1f} MP on average, {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
