"""Soak: thousands of small photos through `dpe enhance` on 2 workers; throughput per 500 photos and each worker's
resident memory from start to end (target: RSS growth under 10 %, no slowdown over the run).

    python benchmarks/soak.py [--count 5000] [--workers 2] [--mode full] [--model default] [--photos DIR]

The photos are derived from the real test photos (random crops of ../shared/testdata/natural, long side 128-384
px, JPEG, every tenth PNG) in a temp folder. One `dpe enhance` process runs them (its own local Prefect server
unless PREFECT_API_URL is set, its own local cluster). A monitor samples, every second, the resident memory of
each Dask worker process (found through the run's own records: each names its worker host:pid) and of the
decoder processes under it (tasks/decoder_process.py). Throughput per block of 500 photos comes from the
report's finish times (1 s resolution). Memory is summarised per window of photos by its peak and its low
(samples fall at random moments of a shard): "start" = photos 501-1000 (model loaded, allocator warm), "end" =
the last 500. The raw samples are saved beside the report (rss-samples.json, with --keep).

Not part of CI (minutes to hours). Other processes on the machine slow every figure: the load average is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = Path(os.environ.get("DPE_TESTDATA", REPO.parent / "shared" / "testdata")) / "natural"
BLOCK = 500


def make_photos(photos: Path, root: Path, count: int, seed: int = 2018) -> None:
    from PIL import Image

    rng = random.Random(seed)
    sources = []
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        image = Image.open(path).convert("RGB")
        image.thumbnail((1600, 1600))
        sources.append(image)
    for i in range(count):
        image = sources[rng.randrange(len(sources))]
        w, h = image.size
        cw, ch = rng.randint(max(32, w // 5), w), rng.randint(max(32, h // 5), h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        crop.thumbnail((rng.randint(128, 384),) * 2)
        png = i % 10 == 9
        target = root / f"batch{i // 250:03d}" / f"img{i:05d}.{'png' if png else 'jpg'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG" if png else "JPEG", **({} if png else {"quality": 90}))
        target.write_bytes(buffer.getvalue())


class Monitor(threading.Thread):
    """Samples the RSS of the run's worker processes (and their decoder children) every second."""

    def __init__(self, dest: Path):
        super().__init__(daemon=True)
        self.records = dest / ".dpe" / "records"
        self.samples: list[tuple[float, int, float, float]] = []  # (time, worker pid, worker MiB, decoders MiB)
        self.workers: set[int] = set()
        self.stop = threading.Event()

    def _find_workers(self) -> None:
        for path in self.records.glob("*/shard-*.jsonl"):
            try:
                for line in path.read_text().splitlines()[:1]:
                    self.workers.add(int(json.loads(line)["worker"].rsplit(":", 1)[1]))
            except (OSError, ValueError, KeyError, IndexError):
                pass

    def run(self) -> None:
        import psutil

        while not self.stop.wait(1.0):
            self._find_workers()
            now = time.time()
            for pid in list(self.workers):
                try:
                    proc = psutil.Process(pid)
                    rss = proc.memory_info().rss / 2**20
                    decoders = sum(c.memory_info().rss for c in proc.children(recursive=True)) / 2**20
                except psutil.Error:
                    continue
                self.samples.append((now, pid, rss, decoders))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--model", default="default")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (photos, outputs, report)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from benchmarks._common import machine, table

    work = Path(tempfile.mkdtemp(prefix="dpe-soak-"))
    src, dst = work / "photos", work / "enhanced"
    t0 = time.perf_counter()
    make_photos(args.photos, src, args.count)
    print(f"machine: {machine()}")
    print(f"{args.count} photos derived from {args.photos} in {time.perf_counter() - t0:.0f} s "
          f"({sum(p.stat().st_size for p in src.rglob('*') if p.is_file()) / 1e6:.0f} MB); mode {args.mode}, "
          f"model {args.model}, {args.workers} workers", flush=True)
    env = dict(os.environ) | {"DPE_HOME": str(work / "dpe-home"), "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).parent / "dpe"), "enhance", str(src), str(dst), "--workers",
               str(args.workers), "--mode", args.mode, "--model", args.model, "--json"]
    monitor = Monitor(dst)
    monitor.start()
    started = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)
        monitor.stop.set()
        monitor.join()
        wall = time.time() - started
        if done.returncode not in (0, 1):
            print(done.stderr[-5000:], file=sys.stderr)
            return done.returncode
        summary = json.loads(done.stdout)
        report = [json.loads(line) for line in Path(summary["report_url"]).read_text().splitlines()]
        report_rows(summary, report, monitor, wall, table)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report_rows(summary: dict, report: list[dict], monitor: Monitor, wall: float, table) -> None:
    done = sorted(datetime.fromisoformat(r["finished"]).timestamp() for r in report if r.get("finished"))
    counts = summary["counts"]
    print(f"\n{counts} in {wall:.0f} s wall (enhance phase {summary['phase_s']} s, {summary['photos_per_s']} "
          f"photos/s; {summary['shards']} shards)")
    rows = []
    previous = done[0] - 0.0 if done else 0.0
    first = done[0] if done else 0.0
    pids = sorted(monitor.workers)
    for start in range(0, len(done), BLOCK):
        block = done[start:start + BLOCK]
        end = block[-1]
        span = end - (previous if start else first)
        rss = []
        for pid in pids:
            upto = [s for s in monitor.samples if s[1] == pid and s[0] <= end + 1]
            rss.append(round(upto[-1][2]) if upto else float("nan"))
        rows.append((f"{start + 1}-{start + len(block)}", round(end - first),
                     len(block) / span if span else float("nan"), *rss))
        previous = end
    print("\nthroughput per 500 photos (report finish times, 1 s resolution; the first block starts at the first "
          "finished photo) and each worker's RSS (MiB) when the block ended")
    print(table(["photos", "t (s)", "photos/s", *[f"RSS {pid}" for pid in pids]], rows))

    # Memory is sampled at random moments of a shard (photos in flight, the model's buffers, a trim after each
    # shard), so each window is summarised by its peak and its low: "start" is photos 501-1000 (model loaded,
    # allocator warm), "end" the last 500.
    rows = []
    windows = {"start": (done[min(BLOCK, len(done) - 1)] if done else 0.0, done[min(2 * BLOCK, len(done)) - 1]
                         if done else 0.0),
               "end": (done[max(0, len(done) - BLOCK - 1)] if done else 0.0, done[-1] + 1 if done else 0.0)}
    for pid in pids:
        samples = [s for s in monitor.samples if s[1] == pid]
        cells: list = [pid]
        for stat in (max, min):
            values = {}
            for name, (lo, hi) in windows.items():
                inside = [s[2] for s in samples if lo <= s[0] <= hi]
                values[name] = stat(inside) if inside else float("nan")
            cells += [round(values["start"]), round(values["end"]),
                      f"{(values['end'] - values['start']) / values['start'] * 100:+.1f}%"]
        run = [s for s in samples if s[0] <= done[-1] + 1] if done else samples
        cells.append(round(max((s[3] for s in run), default=0)))
        rows.append(tuple(cells))
    print("\nresident memory per worker (MiB): peak and low within photos 501-1000 (start) and the last 500 (end); "
          "decoder processes' peak")
    print(table(["worker pid", "peak start", "peak end", "growth", "low start", "low end", "growth", "decoders"],
                rows))
    Path(monitor.records.parent.parent / "rss-samples.json").write_text(json.dumps(monitor.samples))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
