"""The full-resolution path beside its I/O floor (``enhance_speed.py --io-floor``; also the last table of a default
``enhance_speed.py`` run on CPU).

Per size (24 MP by default: the real 12 MP test photo upscaled and saved as a q95 JPEG with its EXIF and ICC profile,
as enhance_under_load.make_inputs does):
- floor: a plain Pillow decode of the file (``Image.open`` + ``load``, bytes already in memory) + a q95 encode to
  memory, at 4:4:4 chroma (what write_photo writes) and at Pillow's default 4:2:0;
- ours: read_photo (bytes from disk, every metadata block parsed) -> Enhancer.enhance(mode="full") -> write_photo
  (every metadata block spliced back, atomic write to a local file), after Enhancer.warm_up().
The candidates run interleaved round by round (a busy machine slows each alike); best and median of the rounds.
Target (issue 12): ours <= 2x the floor.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks._common import machine, table
from benchmarks.enhance_under_load import make_inputs
from dpe_core.inference import Enhancer
from dpe_core.io import read_photo, write_photo


def pillow_floor(data: bytes, subsampling: int) -> tuple[float, float]:
    """(wall, CPU) seconds for a plain Pillow decode of ``data`` and a q95 JPEG encode to memory."""
    start, cpu = time.perf_counter(), time.process_time()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im.save(io.BytesIO(), "JPEG", quality=95, subsampling=subsampling)
    return time.perf_counter() - start, time.process_time() - cpu


def ours(enhancer: Enhancer, path: Path, out: Path, stages: dict[str, list[float]]) -> tuple[float, float]:
    """(wall, CPU of the whole process) seconds of read_photo + enhance full + write_photo."""
    start, cpu = time.perf_counter(), time.process_time()
    photo = read_photo(str(path))
    t_read = time.perf_counter()
    result = enhancer.enhance(photo, mode="full")
    t_enh = time.perf_counter()
    write_photo(result, str(out))
    end = time.perf_counter()
    stages.setdefault("read_photo", []).append(t_read - start)
    for name, seconds in enhancer.last_timings.items():
        if name != "read":
            stages.setdefault(name, []).append(seconds)
    stages.setdefault("write_photo", []).append(end - t_enh)
    return end - start, time.process_time() - cpu


def run(source: Path, sizes: list[int], rounds: int = 5, threads: int | None = None, header: bool = True) -> None:
    if header:
        print(f"machine: {machine()}")
    if not source.is_file():
        print(f"I/O floor: skipped ({source} not found; set DPE_TESTDATA)")
        return
    enhancer = Enhancer.from_pretrained("default", device="cpu", threads=threads)
    warm = enhancer.warm_up()
    load_before = os.getloadavg()[0]
    rows, stage_rows = [], []
    with tempfile.TemporaryDirectory(prefix="dpe-floor-") as tmp:
        folder = Path(tmp)
        for mp, path in make_inputs(source, sizes, folder).items():
            data = path.read_bytes()
            out = folder / f"out_{mp}.jpg"
            times: dict[str, list[tuple[float, float]]] = {"floor444": [], "floor420": [], "ours": []}
            stages: dict[str, list[float]] = {}
            ours(enhancer, path, out, {})  # first call at this size: allocator, page cache
            for _ in range(rounds):
                times["floor444"].append(pillow_floor(data, 0))
                times["floor420"].append(pillow_floor(data, 2))
                times["ours"].append(ours(enhancer, path, out, stages))
            best = {k: min(w for w, _ in v) for k, v in times.items()}
            med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
            cpu = {k: min(c for _, c in v) for k, v in times.items()}
            with Image.open(path) as im:
                size = f"{im.width}x{im.height}"
            for name, label in (("floor444", "Pillow decode + q95 encode 4:4:4 (floor)"),
                                ("floor420", "Pillow decode + q95 encode 4:2:0 (Pillow default)"),
                                ("ours", "read_photo + enhance full + write_photo")):
                rows.append([f"{mp} MP {size}", label, best[name], med[name],
                             f"{best[name] / best['floor444']:.2f}x", f"{best[name] / best['floor420']:.2f}x",
                             cpu[name], f"{cpu[name] / cpu['floor444']:.2f}x"])
            stage_rows.append([f"{mp} MP"] + [min(stages.get(k, [0.0])) for k in
                                              ("read_photo", "downscale", "network", "fit", "apply", "write_photo")])
    print(f"\nFull path vs the I/O floor of the same JPEG, {rounds} interleaved rounds (seconds; Enhancer "
          f"{enhancer.threads} threads, warm-up {', '.join(f'{k} {v:.2f} s' for k, v in warm.items())}; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after: other work on the machine slows every row)")
    print(table(["photo", "what", "best s", "median s", "vs floor 4:4:4", "vs floor 4:2:0", "CPU s",
                 "CPU vs floor 4:4:4"], rows))
    print("CPU s: process CPU time (all threads), best of the rounds: the work done, which other processes on the "
          "machine do not inflate the way they inflate wall time.")
    print("\nWhere the full path's time goes (best of the rounds, seconds)")
    print(table(["photo", "read_photo", "downscale", "network", "fit", "apply", "write_photo"], stage_rows))


__all__ = ["run"]
