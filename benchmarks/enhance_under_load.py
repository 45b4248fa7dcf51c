"""The full path with a core taken: idle vs loaded seconds per photo (``enhance_speed.py --under-load``).

Per size (12 MP: a real camera JPEG; 24 MP: it upscaled, saved with the same EXIF and ICC profile): read_photo ->
Enhancer.enhance(mode="full") -> write_photo (all metadata carried), through the library API, in this process,
after Enhancer.warm_up(). "Loaded": a busy-loop child process pinned to one of this process's cores (started here,
stopped by its handle). Target: loaded <= 2x idle. The load average is printed beside each figure: when other
work already keeps cores busy, "idle" is not idle, and only the ratio measured in this run means anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, table
from dpe_core.inference import Enhancer
from dpe_core.io import read_photo, write_photo

BUSY_LOOP = "while True:\n    pass\n"


def make_inputs(source: Path, sizes: list[int], folder: Path) -> dict[int, Path]:
    """{megapixels: JPEG path}: the source as is when it has about that size, else resized with its metadata."""
    from PIL import Image

    out = {}
    with Image.open(source) as im:
        exif, icc = im.info.get("exif"), im.info.get("icc_profile")
        for mp in sizes:
            if abs(im.width * im.height - mp * 1e6) < 0.05 * mp * 1e6:
                out[mp] = source
                continue
            scale = (mp * 1e6 / (im.width * im.height)) ** 0.5
            resized = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), 3)
            path = folder / f"photo_{mp}mp.jpg"
            extra = {k: v for k, v in (("exif", exif), ("icc_profile", icc)) if v}
            resized.save(path, quality=95, **extra)
            out[mp] = path
    return out


class BusyCore:
    """A child process spinning on one core (the last one this process may use) until stopped."""

    def __init__(self):
        self.core = sorted(os.sched_getaffinity(0))[-1]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BusyCore:
        code = f"import os\nos.sched_setaffinity(0, {{{self.core}}})\n" + BUSY_LOOP
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(1.0)  # let it start spinning
        return self

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)


def one_photo(enhancer: Enhancer, path: Path, out: Path) -> float:
    start = time.perf_counter()
    photo = read_photo(str(path))
    write_photo(enhancer.enhance(photo, mode="full"), str(out))
    return time.perf_counter() - start


def timed(enhancer: Enhancer, path: Path, out: Path, rounds: int) -> tuple[float, float, dict[str, float]]:
    """(best seconds, 1-minute load average at the end, stages of the last call)."""
    best = min(one_photo(enhancer, path, out) for _ in range(rounds))
    return best, os.getloadavg()[0], dict(enhancer.last_timings)


def run(source: Path, sizes: list[int], rounds: int = 3, threads: int | None = None) -> None:
    print(f"machine: {machine()}")
    if not source.is_file():
        print(f"under load: skipped ({source} not found; set DPE_TESTDATA)")
        return
    enhancer = Enhancer.from_pretrained("default", device="cpu", threads=threads)
    warm = enhancer.warm_up()
    print(f"Enhancer: {enhancer.threads} threads (strip pool and torch); warm-up "
          + ", ".join(f"{k} {v:.1f} s" for k, v in warm.items()))
    load_before = os.getloadavg()[0]
    rows, stages = [], []
    with tempfile.TemporaryDirectory(prefix="dpe-load-") as tmp:
        folder = Path(tmp)
        inputs = make_inputs(source, sizes, folder)
        for mp, path in inputs.items():
            out = folder / f"out_{mp}.jpg"
            one_photo(enhancer, path, out)  # first call at this size: allocator, page cache
            idle, idle_load, idle_stages = timed(enhancer, path, out, rounds)
            with BusyCore() as busy:
                loaded, loaded_load, loaded_stages = timed(enhancer, path, out, rounds)
            ratio = loaded / idle
            rows.append([f"{mp} MP", idle, f"{idle_load:.2f}", loaded, f"{loaded_load:.2f}", f"{ratio:.2f}x",
                         "yes" if ratio <= 2 else "NO"])
            for name, st in (("idle", idle_stages), (f"core {busy.core} busy", loaded_stages)):
                stages.append([f"{mp} MP", name] + [st.get(k, 0.0) for k in ("downscale", "network", "fit", "apply")])
            assert np.asarray(read_photo(str(out)).pixels).shape == np.asarray(read_photo(str(path)).pixels).shape
    print(f"\nread_photo + enhance(mode='full') + write_photo, best of {rounds} (seconds; load average: 1 minute, "
          f"{load_before:.2f} before the run - above ~0.5 'idle' already shares the machine)")
    print(table(["photo", "idle s", "load", "one core busy s", "load", "loaded / idle", "<= 2x"], rows))
    print("\nEnhancer stages of the last call (seconds)")
    print(table(["photo", "machine", "downscale", "network", "fit", "apply"], stages))


__all__ = ["BusyCore", "make_inputs", "run"]
