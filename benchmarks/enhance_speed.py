"""Enhancer speed, side by side in one run: 512-px throughput and full-resolution photos.

    python benchmarks/enhance_speed.py                 # default (~5 min on a 2-core CPU)
    python benchmarks/enhance_speed.py --quick         # ~2 min: fewer rounds, 12 MP only, no naive full-size forward
    python benchmarks/enhance_speed.py --compile       # also torch.compile the net (CPU: ~1 min to compile)
    python benchmarks/enhance_speed.py --under-load    # 12/24 MP full path, idle vs one core busy (~2 min)
    python benchmarks/enhance_speed.py --io-floor      # 24 MP full path beside a plain Pillow decode + encode (~1 min)

Tables:
1. 512 px: images/s of the Enhancer (folded graph, batched; and end to end through enhance_batch) against a naive
   eager one-image loop of the same model, the achieved GFLOP/s (FLOPs counted with FlopCounterMode) and their
   share of a 2048^3 fp32 matmul measured in the same run. On CUDA also bf16 autocast (and compile with --compile).
2. 12 and 24 MP photos (a real 12 MP photo from the test data, upscaled for 24 MP): seconds per photo and peak RSS
   of mode full, mode tiled (the demo's approach, long side capped at 2048, resized kernels; dilated kernels too)
   and a naive full-size forward (skipped, with the reason, when it cannot fit in memory), each in a fresh process;
   PSNR of full against tiled (and of each against the input: how much the model changes the photo); full's cost
   in units of a working-size enhancement (mode paper: 512 px for a 512-trained model) in the same process.
3. Where full's time goes (stages of the last call).
4. (--io-floor, also part of the default run) the 24 MP end-to-end path - read_photo with all metadata, enhance
   full, write_photo with all metadata - beside the I/O floor of the same file: a plain Pillow decode + q95 encode
   (4:4:4 as write_photo, and Pillow's default 4:2:0), interleaved round by round (benchmarks/io_floor.py).

Only ratios measured in one run are comparable: other processes on the machine slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import best_of, machine, mem_available_gb, peak_rss_mb, rss_mb, table  # noqa: E402
from dpe_core.inference import Enhancer, pick_device  # noqa: E402
from dpe_core.inference_graph import FoldedGenerator  # noqa: E402
from dpe_core.nn import build_generator, load_model  # noqa: E402
from dpe_core.nn.modelfile import BUNDLED_MODELS  # noqa: E402

TESTDATA = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"))
SOURCE_PHOTO = "natural/lomiri_sunset.jpg"  # 4272 x 2848: a real 12 MP photo
NAIVE_BYTES_PER_PIXEL = 870  # measured peak RSS of a plain eager forward, per input pixel (1-2 MP inputs)


def load_generator(model: str):
    """(generator, description): a model file, the bundled default when present, else an untrained generator."""
    if model == "auto":
        model = "default" if (BUNDLED_MODELS / "default" / "model.safetensors").is_file() else "untrained"
    if model == "untrained":
        torch.manual_seed(0)
        return build_generator().eval(), "untrained generator (release init; no bundled model found)"
    generator, info = load_model(model)
    return generator, f"{model} ({info.name} {info.version})"


def flops_512(generator) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(torch.rand(1, 3, 512, 512))
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- 512 px
def bench_512(args, generator, device: torch.device) -> None:
    flops = flops_512(generator)
    gen = generator.to(device)
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    rng = np.random.default_rng(0)
    photos = [(rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(8)]
    x1 = torch.rand(1, 3, 512, 512, device=device)
    x4 = torch.rand(4, 3, 512, 512, device=device)
    x8 = torch.rand(8, 3, 512, 512, device=device)
    folded = FoldedGenerator(generator).to(device)
    folded_cl = FoldedGenerator(generator, channels_last=True).to(device)
    enhancer = Enhancer(generator, device=device, batch_size=4)
    threads = torch.get_num_threads()

    def inference(fn):
        def run():
            with torch.inference_mode():
                fn()

        return run

    def one_thread(fn):
        def run():
            torch.set_num_threads(1)
            try:
                fn()
            finally:
                torch.set_num_threads(threads)

        return run

    def naive():
        with torch.no_grad():
            for i in range(4):
                gen(x4[i : i + 1])

    candidates = {  # name -> (function, images per call, batch)
        "naive eager loop (GlobalUNetGenerator)": (naive, 4, 1),
        "folded, batch 1": (inference(lambda: folded(x1)), 1, 1),
        "folded, batch 4": (inference(lambda: folded(x4)), 4, 4),
        "folded, batch 8": (inference(lambda: folded(x8)), 8, 8),
        "folded channels_last, batch 4": (inference(lambda: folded_cl(x4)), 4, 4),
        "Enhancer.enhance_batch paper (uint8 in/out)": (lambda: enhancer.enhance_batch(photos, "paper"), 8, 4),
    }
    if device.type == "cpu" and threads > 1:
        candidates["folded, batch 4, 1 thread"] = (one_thread(inference(lambda: folded(x4))), 4, 4)
    if device.type == "cuda":
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16)

        def amp(fn):
            def run():
                with torch.inference_mode(), bf16:
                    fn()

            return run

        candidates["folded bf16 autocast, batch 8"] = (amp(lambda: folded(x8)), 8, 8)
        candidates["folded bf16 channels_last, batch 8"] = (amp(lambda: folded_cl(x8)), 8, 8)
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(folded, options={"freezing": True} if device.type == "cpu" else None)
        with torch.inference_mode():
            compiled(x4)
        print(f"torch.compile of the folded net: {time.perf_counter() - start:.1f} s to compile (batch 4)")
        candidates["folded + torch.compile, batch 4"] = (inference(lambda: compiled(x4)), 4, 4)
    timings = best_of({"matmul": lambda: a @ b} | {k: v[0] for k, v in candidates.items()}, args.rounds, device)
    peak = 2 * n**3 / timings["matmul"] / 1e9
    naive_rate = 4 / timings["naive eager loop (GlobalUNetGenerator)"]
    rows = []
    for name, (_, images, batch) in candidates.items():
        rate = images / timings[name]
        gflops = rate * flops / 1e9
        rows.append([name, batch, rate, gflops, f"{100 * gflops / peak:.0f}%", f"{rate / naive_rate:.2f}x"])
    print(
        f"\n512 x 512 on {device}: {flops / 1e9:.2f} GFLOP per image (FlopCounterMode); "
        f"2048^3 fp32 matmul {peak:.1f} GFLOP/s (best of {args.rounds}, same run)"
    )
    print(table(["variant", "batch", "images/s", "GFLOP/s", "of matmul", "vs naive"], rows))


# ---------------------------------------------------------------------------------------------- large photos
def make_photos(sizes: list[int], folder: Path) -> dict[int, Path]:
    from PIL import Image

    with Image.open(TESTDATA / SOURCE_PHOTO) as im:
        im = im.convert("RGB")
        out = {}
        for mp in sizes:
            w = round((mp * 1e6 * 1.5) ** 0.5)
            h = round(w / 1.5)
            resized = im if abs(im.width * im.height - mp * 1e6) < 0.05 * mp * 1e6 else im.resize((w, h), 3)
            path = folder / f"photo_{mp}mp.npy"
            np.save(path, np.asarray(resized))
            out[mp] = path
    return out


def worker(spec: dict) -> dict:
    """Runs in a fresh process: one measurement, peak RSS of this process."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    generator, _ = load_generator(spec["model"])
    photo = np.load(spec["photo"])
    result: dict = {"pixels": int(photo.shape[0] * photo.shape[1]), "rss_input_mb": rss_mb()}
    kind = spec["kind"]
    if kind == "naive":
        need = result["pixels"] * NAIVE_BYTES_PER_PIXEL / 2**30
        avail = mem_available_gb()
        if need * 1.2 + 1 > avail:
            result["skipped"] = f"needs ~{need:.0f} GB for activations, {avail:.0f} GB available"
            return result
        generator = generator.to(device)
        x = torch.from_numpy(photo).permute(2, 0, 1)[None].to(device, torch.float32).div_(255)
        start = time.perf_counter()
        with torch.inference_mode():
            generator(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mb"] = peak_rss_mb()
        if device.type == "cuda":
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result
    options = {"sync_timings": True}
    if kind.startswith("tiled"):
        options["tiled_kernels"] = kind.split(":")[1]
    if kind == "full":  # the apply kernel: eager first, then compiled (what compile_apply="auto" does over time)
        options["compile_apply"] = "off"
    enhancer = Enhancer(generator, device=device, **options)
    small = photo[:: max(1, photo.shape[0] // 341), :: max(1, photo.shape[1] // 512)][:341, :512].copy()
    enhancer.enhance(small, "paper")  # warm-up: first forward, allocator
    if kind == "full":
        t512 = []
        for _ in range(3):
            start = time.perf_counter()
            enhancer.enhance(small, "paper")
            t512.append(time.perf_counter() - start)
        result["seconds_512"] = min(t512)
        start = time.perf_counter()
        enhancer.enhance(photo, "full")
        result["seconds_eager"] = time.perf_counter() - start
        result["stages_eager"] = enhancer.last_timings
        if device.type == "cpu":
            enhancer = Enhancer(generator, device=device, compile_apply="on", sync_timings=True)
            enhancer.enhance(small, "paper")
            start = time.perf_counter()
            enhancer.enhance(photo, "full")  # first call loads the fused apply loop (compiled once per machine)
            result["seconds_first"] = time.perf_counter() - start
    start = time.perf_counter()
    out = enhancer.enhance(photo, "full" if kind == "full" else "tiled")
    result["seconds"] = time.perf_counter() - start
    result["stages"] = enhancer.last_timings
    result["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if spec.get("save"):
        np.save(spec["save"], out)
    return result


def run_worker(spec: dict, timeout: float) -> dict:
    print(f"  ... {spec['kind']} on {Path(spec['photo']).stem}", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over the {timeout:.0f} s limit"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"skipped": f"failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    se = 0.0
    for y in range(0, a.shape[0], 256):
        d = a[y : y + 256].astype(np.float32) - b[y : y + 256].astype(np.float32)
        se += float(np.square(d, dtype=np.float64).sum())
    mse = se / a.size
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def bench_large(args, device: torch.device) -> None:
    if not (TESTDATA / SOURCE_PHOTO).is_file():
        print(f"\nlarge photos: skipped ({TESTDATA / SOURCE_PHOTO} not found; set DPE_TESTDATA)")
        return
    with tempfile.TemporaryDirectory(prefix="dpe-bench-") as tmp:
        folder = Path(tmp)
        photos = make_photos(args.sizes, folder)
        rows, stage_rows = [], []
        for mp, path in photos.items():
            base = {"device": str(device), "model": args.model, "photo": str(path), "threads": args.threads}
            full = run_worker(base | {"kind": "full", "save": str(folder / "full.npy")}, args.timeout)
            results = {"full": full}
            for kernels in args.tiled_kernels:
                if kernels == "resize" and mp != args.sizes[0] and not args.all_tiled:
                    results["tiled:resize"] = {"skipped": f"same 2048-px work as at {args.sizes[0]} MP (--all-tiled)"}
                    continue
                results[f"tiled:{kernels}"] = run_worker(
                    base | {"kind": f"tiled:{kernels}", "save": str(folder / f"tiled_{kernels}.npy")}, args.timeout
                )
            if not args.quick:
                results["naive"] = run_worker(base | {"kind": "naive"}, args.timeout)
            full_out = np.load(folder / "full.npy") if (folder / "full.npy").is_file() else None
            t512 = full.get("seconds_512", float("nan"))
            for name, r in results.items():
                if name.startswith("tiled"):
                    label = f"tiled, {name.split(':')[1]} kernels"
                else:
                    label = {"full": "full (guided)", "naive": "naive full-size forward"}[name]
                if "skipped" in r:
                    rows.append([f"{mp} MP", label, "-", "-", "-", "-", "-", "-", r["skipped"]])
                    continue
                quality, moved = "-", "-"
                saved = folder / f"tiled_{name.split(':')[-1]}.npy"
                if name.startswith("tiled") and full_out is not None and saved.is_file():
                    tiled_out = np.load(saved)
                    quality = f"{psnr_u8(full_out, tiled_out):.1f}"
                    moved = f"{psnr_u8(np.load(path), tiled_out):.1f}"
                    saved.unlink()
                if name == "full" and full_out is not None:
                    moved = f"{psnr_u8(np.load(path), full_out):.1f}"
                note = ""
                if name == "full" and "seconds_first" in r:
                    label = "full (guided), fused C apply"
                    note = f"first call {r['seconds_first']:.1f} s: loads (or compiles, once per machine) the loop"
                if name == "full" and "seconds_eager" in r:
                    rows.append(
                        [
                            f"{mp} MP",
                            "full (guided), eager apply",
                            r["seconds_eager"],
                            r["seconds_eager"] / t512,
                            "-",
                            "-",
                            "-",
                            "-",
                            "compile_apply='off', or before warm_up() loaded the fused loop",
                        ]
                    )
                speed_vs_full = r["seconds"] / full["seconds"] if "seconds" in full else float("nan")
                rows.append(
                    [
                        f"{mp} MP",
                        label,
                        r["seconds"],
                        r["seconds"] / t512,
                        f"{speed_vs_full:.1f}x" if name != "full" else "1x",
                        r["peak_rss_mb"] / 1024,
                        quality,
                        moved,
                        note,
                    ]
                )
            for key, kernel in (("stages_eager", "eager"), ("stages", "compiled")):
                if key in full:
                    stages, pixels = full[key], full["pixels"] / 1e6
                    stage_rows.append(
                        [f"{mp} MP", kernel, t512]
                        + [stages.get(k, 0.0) for k in ("read", "downscale", "network", "fit", "apply")]
                        + [stages.get("apply", 0.0) / pixels * 1e3]
                    )
            (folder / "full.npy").unlink(missing_ok=True)
        print(
            f"\nLarge photos on {device} (each measurement in a fresh process; 'x paper' = seconds over those of a "
            "working-size enhancement - mode paper, the net at its train_size, on a 512x341 photo - measured in "
            "full's process)"
        )
        print(
            table(
                [
                    "photo",
                    "mode",
                    "s/photo",
                    "x paper",
                    "time vs full",
                    "peak RSS GB",
                    "PSNR full vs this",
                    "PSNR input vs this",
                    "note",
                ],
                rows,
            )
        )
        print("\nWhere mode full's time goes (seconds; compiled: the call after the compiling one)")
        print(
            table(
                ["photo", "apply", "paper enh.", "read", "downscale", "network", "fit", "apply+write", "ms/MP"],
                stage_rows,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="auto", help="model URI, 'default', 'untrained' or 'auto'")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="megapixels (default 12 24)")
    parser.add_argument("--tiled-kernels", nargs="+", default=None, choices=["resize", "dilate"])
    parser.add_argument("--all-tiled", action="store_true", help="resized-kernel tiled at every size")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the net")
    parser.add_argument("--skip-512", action="store_true")
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--under-load", action="store_true", help="idle vs one core busy (enhance_under_load.py)")
    parser.add_argument("--io-floor", action="store_true", help="only the full path vs Pillow decode+encode")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.under_load:
        from benchmarks.enhance_under_load import run

        run(TESTDATA / SOURCE_PHOTO, args.sizes or [12, 24], rounds=args.rounds or 3, threads=args.threads)
        return
    if args.io_floor:
        from benchmarks.io_floor import run as run_floor

        run_floor(TESTDATA / SOURCE_PHOTO, args.sizes or [24], rounds=args.rounds or 5, threads=args.threads)
        return
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.sizes = args.sizes or ([12] if args.quick else [12, 24])
    args.tiled_kernels = args.tiled_kernels or (["dilate"] if args.quick else ["resize", "dilate"])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    generator, described = load_generator(args.model)
    print(f"machine: {machine()}")
    print(f"model: {described}")
    if not torch.cuda.is_available():
        print("CUDA: not available on this machine (the CUDA path - bf16 autocast, channels_last - is not measured)")
    if not args.skip_512:
        bench_512(args, generator, device)
    bench_large(args, device)
    if device.type == "cpu":
        from benchmarks.io_floor import run as run_floor

        run_floor(TESTDATA / SOURCE_PHOTO, [24], rounds=args.rounds + 2, threads=args.threads, header=False)


if __name__ == "__main__":
    main()
