"""End-to-end throughput of `dpe enhance` (Prefect + Dask) against a bare single-process loop, same photos, same run.

    python benchmarks/pipeline_speed.py [--photos DIR] [--modes paper full] [--workers 1 2] [--model default]
    python benchmarks/pipeline_speed.py --under-load [--modes full]   # each runner idle, then with one core busy

For each mode: the bare loop (read -> decode -> Enhancer -> encode -> atomic write, one process, torch using every
core) runs before and after the `dpe enhance` runs (1 and 2 local workers), so the ratio is against the mean of two
bare runs measured around it. Printed per run: photos/s in the enhance phase (from the first shard submitted to the
last one finished; start-up excluded), the ratio to the bare loop, the end-to-end wall time of the `dpe` process,
and the start-up costs reported separately: Prefect server (fresh database and existing database), Dask cluster,
model load. An orchestration probe (one tiny photo per shard) measures Prefect+Dask overhead per shard.

``--under-load``: every runner (bare loop, `dpe enhance` with 1 and 2 workers) runs twice, idle and while a
busy-loop child process of this benchmark keeps one core busy (pinned to the last core, stopped by its handle; see
enhance_under_load.BusyCore); printed: photos/s of each and loaded/idle time per photo (target <= 2x), beside the
usual ratios to the bare loop.

Only ratios from one run are comparable: other processes on the machine slow every figure (the load average is
printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = Path(os.environ.get("DPE_TESTDATA", REPO.parent / "shared" / "testdata")) / "natural"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic")


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import psutil

    mem = psutil.virtual_memory().total / 2**30
    gpu = ""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout.strip()
        gpu = f"; GPUs: {out.count('GPU ')}" if out else ""
    return (f"{cpu}; {os.cpu_count()} logical cores; {mem:.0f} GiB{gpu}; Python {platform.python_version()}; "
            f"load avg {os.getloadavg()[0]:.2f}")


def bare_loop(src: str, dst: str, mode: str, model: str) -> dict:
    """The baseline: one process, one photo after another, torch with its default threads (all cores)."""
    import torch

    from dpe_core.inference import Enhancer
    from dpe_core.io import decode_photo, encode_photo
    from dpe_core.io.storage import read_bytes, write_bytes_atomic

    files = sorted(p for p in Path(src).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    t0 = time.perf_counter()
    enhancer = Enhancer.from_pretrained(model)
    enhancer.warm_up()  # as the workers do: first forward, the fused apply loop loaded
    load_s = time.perf_counter() - t0
    ok = 0
    t0 = time.perf_counter()
    for path in files:
        try:
            photo = decode_photo(read_bytes(str(path)), path.name)
            out = enhancer.enhance(photo, mode=mode)
            write_bytes_atomic(str(Path(dst) / path.relative_to(src)), encode_photo(out))
            ok += 1
        except Exception as exc:  # same policy as the pipeline: count, go on
            print(f"bare loop: {path.name}: {exc}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    return {"photos": ok, "seconds": seconds, "photos_per_s": ok / seconds, "model_load_s": load_s,
            "threads": torch.get_num_threads()}


def run_bare(src: str, mode: str, model: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dpe-bench-bare-") as dst:
        done = subprocess.run([sys.executable, __file__, "--bare", src, dst, mode, model], capture_output=True,
                              text=True, cwd=REPO, check=False)
        if done.returncode:
            raise RuntimeError(f"bare loop failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def dpe_command() -> list[str]:
    """The installed `dpe` script beside this Python, else the same CLI as a module (a machine the project was not
    pip-installed on, such as a lent GPU machine with the sources and wheels on PYTHONPATH)."""
    script = Path(sys.executable).parent / "dpe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def run_dpe(src: str, mode: str, model: str, workers: int, env: dict, extra: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="dpe-bench-out-") as dst:
        command = [*dpe_command(), "enhance", src, dst, "--mode", mode, "--model", model,
                   "--workers", str(workers), "--json", *extra]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)
        wall = time.perf_counter() - t0
        if done.returncode not in (0, 1):
            raise RuntimeError(f"dpe enhance failed ({done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads(done.stdout)
        summary["wall_s"] = wall
        if summary["counts"]["error"] and Path(summary.get("report_url") or "").is_file():
            errors = [line for line in Path(summary["report_url"]).read_text().splitlines() if '"error"' in line]
            print(f"dpe enhance ({workers} workers): {len(errors)} failed, first: {errors[:1]}", file=sys.stderr)
        return summary


def tiny_folder(root: Path, count: int, photos: Path) -> Path:
    """count copies of the smallest photo: work per shard ~0, what is left is orchestration."""
    candidates = [p for p in photos.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
    smallest = min(candidates, key=lambda p: p.stat().st_size)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shutil.copyfile(smallest, root / f"tiny-{i:03d}{smallest.suffix}")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="folder of real photos (read only)")
    parser.add_argument("--modes", nargs="*", default=["paper", "full"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--model", default="default")
    parser.add_argument("--copies", type=int, default=3,
                        help="each photo this many times (distinct names) so the steady state dominates")
    parser.add_argument("--probe-shards", type=int, default=24, help="shards in the orchestration probe (0: skip)")
    parser.add_argument("--under-load", action="store_true",
                        help="each runner idle and with one core kept busy by a child process")
    parser.add_argument("--bare", nargs=4, metavar=("SRC", "DST", "MODE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        print(json.dumps(bare_loop(*args.bare)))
        return 0

    sys.path.insert(0, str(REPO))
    from flows.server import start_local_server

    originals = Path(args.photos)
    files = sorted(p for p in originals.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    print(f"machine: {machine()}")
    print(f"photos: {len(files)} files under {originals} ({sum(p.stat().st_size for p in files) / 1e6:.0f} MB), "
          f"each {args.copies}x; model {args.model}")
    home = Path(tempfile.mkdtemp(prefix="dpe-bench-home-"))
    photos = home / "photos"
    for copy in range(args.copies):
        for path in files:
            target = photos / f"copy{copy}" / path.relative_to(originals)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    try:
        server = start_local_server(home, services=False)
        fresh_s = server.start_s
        server.stop()
        server = start_local_server(home, services=False)
        print(f"start-up: Prefect server {fresh_s:.1f} s (new database), {server.start_s:.1f} s (existing database)")
        env = dict(os.environ) | {"PREFECT_API_URL": server.api_url, "DPE_HOME": str(home / "dpe"),
                                  "PREFECT_HOME": str(home / "client")}
        rows = []
        try:
            if args.under_load:
                under_load(str(photos), args, env)
                return 0
            for mode in args.modes:
                before = run_bare(str(photos), mode, args.model)
                runs = [(w, run_dpe(str(photos), mode, args.model, w, env)) for w in args.workers]
                after = run_bare(str(photos), mode, args.model)
                bare = (before["photos_per_s"] + after["photos_per_s"]) / 2
                rows.append((mode, f"bare loop ({before['threads']} torch threads)", bare, 1.0,
                             before["seconds"] + before["model_load_s"], None, None, None, None, None,
                             f"{before['photos_per_s']:.3f} / {after['photos_per_s']:.3f} before/after; "
                             f"model load {before['model_load_s']:.1f} s"))
                for workers, s in runs:
                    n = s["counts"]["ok"]
                    rate = n / s["phase_s"] if s["phase_s"] else 0.0
                    rows.append((mode, f"dpe enhance, {workers} worker{'s' if workers > 1 else ''}", rate, rate / bare,
                                 s["wall_s"], s["cluster_start_s"], s["overhead_per_shard_s"], s["idle_per_shard_s"],
                                 s["shards"], s["model_load_s"],
                                 f"{s['counts']['error']} failed; flow total {s['total_s']} s"))
            if args.probe_shards:
                with tempfile.TemporaryDirectory(prefix="dpe-bench-tiny-") as tiny:
                    src = tiny_folder(Path(tiny) / "src", args.probe_shards, originals)
                    s = run_dpe(str(src), "paper", args.model, 2, env, ["--shard-size", "1"])
                    busy_per_shard = s["task_busy_s"] / max(1, s["shards"])
                    rows.append(("probe", f"{s['shards']} shards x 1 tiny photo, 2 workers", s["shards"] / s["phase_s"],
                                 None, s["wall_s"], s["cluster_start_s"], s["overhead_per_shard_s"],
                                 s["idle_per_shard_s"], s["shards"], s["model_load_s"],
                                 f"work inside a shard {busy_per_shard:.3f} s"))
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print()
    header = ("mode", "runner", "photos/s", "vs bare", "wall s", "cluster start s", "overhead/shard s",
              "idle/shard s", "shards", "model load s", "notes")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{c:.3f}" if isinstance(c, float) else ("" if c is None else str(c)) for c in row]
        print("| " + " | ".join(cells) + " |")
    print()
    print("photos/s: enhance phase only (dpe: first shard submitted -> last finished, after the model is loaded on "
          "every worker; bare: the loop, model load excluded). wall s: the whole `dpe` process (Python start, flow, "
          "cluster start, model load, report) or the bare loop incl. model load. overhead/shard: mean gap between "
          "one shard's end and the next shard's start on the same worker (Prefect + Dask per task); idle/shard: "
          "(phase x workers - time inside the tasks) / shards, waiting for the last shards included.")
    print(f"load avg after: {os.getloadavg()[0]:.2f}")
    return 0


def under_load(photos: str, args, env: dict) -> None:
    """Every runner idle, then with one core kept busy; a table of photos/s and loaded/idle per photo."""
    sys.path.insert(0, str(REPO))
    from benchmarks.enhance_under_load import BusyCore

    rows = []
    for mode in args.modes:
        results: dict[str, dict[str, float]] = {}
        for loaded in (False, True):
            busy = BusyCore() if loaded else None
            if busy is not None:
                busy.__enter__()
            try:
                state = f"core {busy.core} busy" if busy else "idle"
                bare = run_bare(photos, mode, args.model)
                results.setdefault("bare loop", {})[state] = bare["photos_per_s"]
                for workers in args.workers:
                    s = run_dpe(photos, mode, args.model, workers, env)
                    rate = s["counts"]["ok"] / s["phase_s"] if s["phase_s"] else 0.0
                    label = f"dpe enhance, {workers} worker{'s' if workers > 1 else ''}"
                    results.setdefault(label, {})[state] = rate
                    if s["counts"]["error"]:
                        print(f"{label} ({state}): {s['counts']['error']} photos failed", file=sys.stderr)
                load = os.getloadavg()[0]
                results.setdefault("_load", {})[state] = load
            finally:
                if busy is not None:
                    busy.__exit__(None, None, None)
        loads = results.pop("_load")
        idle_key = "idle"
        busy_key = next(k for k in loads if k != "idle")
        bare_idle, bare_busy = results["bare loop"][idle_key], results["bare loop"][busy_key]
        for runner, r in results.items():
            idle, busy_rate = r[idle_key], r[busy_key]
            rows.append((mode, runner, idle, busy_rate, idle / busy_rate if busy_rate else float("inf"),
                         idle / bare_idle, busy_rate / bare_busy))
        rows.append((mode, "load average (1 min) at the end", loads[idle_key], loads[busy_key], None, None, None))
    print()
    header = ("mode", "runner", "idle photos/s", f"{busy_key} photos/s", "loaded / idle per photo",
              "vs bare idle", "vs bare loaded")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{c:.3f}" if isinstance(c, float) else ("" if c is None else str(c)) for c in row]
        print("| " + " | ".join(cells) + " |")
    print("\nloaded / idle per photo: seconds per photo with the core busy over those idle (target <= 2x). "
          "photos/s: enhance phase only (start-up and model load excluded), as in the main table.")


if __name__ == "__main__":
    sys.exit(main())
