"""Cost of decoding in a separate decoder process (tasks/decoder_process.py) against decoding in-process.

    python benchmarks/decode_isolation.py [--photos DIR] [--rounds 3]

Each round decodes every photo in-process and through the worker's decoder process (started once, reused),
interleaved photo by photo so a busy machine slows both alike; the best round of each is printed, with the
decoded megapixels, the time to start a decoder process, and its resident memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_PHOTOS = Path(os.environ.get("DPE_TESTDATA", REPO.parent / "shared" / "testdata")) / "natural"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import psutil

    from benchmarks._common import machine, table
    from dpe_core.io import decode_photo
    from tasks.decoder_process import DecoderProcess

    files = sorted(p for p in args.photos.iterdir() if p.is_file() and not p.name.startswith("."))
    blobs = [(p.name, p.read_bytes()) for p in files]
    child = DecoderProcess()
    megapixels = 0.0
    best = {"in-process": float("inf"), "decoder process": float("inf")}
    per_photo: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        spent = {"in-process": 0.0, "decoder process": 0.0}
        megapixels = 0.0
        for name, data in blobs:
            t0 = time.perf_counter()
            photo = decode_photo(data, name)
            t1 = time.perf_counter()
            child.decode(data, name, 120)
            t2 = time.perf_counter()
            spent["in-process"] += t1 - t0
            spent["decoder process"] += t2 - t1
            megapixels += photo.width * photo.height / 1e6
            per_photo.setdefault(name, []).append((t2 - t1) - (t1 - t0))
        for key in best:
            best[key] = min(best[key], spent[key])
    child_rss = psutil.Process(child.pid).memory_info().rss / 2**20
    start_s = child.start_s
    child.close()
    t0 = time.perf_counter()
    first = DecoderProcess()
    first.decode(blobs[0][1], blobs[0][0], 120)
    first_use_s = time.perf_counter() - t0
    first.close()

    base = best["in-process"]
    print(f"machine: {machine()}")
    print(f"{len(blobs)} photos from {args.photos}, {megapixels:.0f} MP decoded per round, best of {args.rounds}")
    rows = [(key, value, len(blobs) / value, megapixels / value, value / base,
             (value - base) / len(blobs) * 1000) for key, value in best.items()]
    print(table(["decode", "total s", "photos/s", "MP/s", "vs in-process", "extra ms/photo"], rows))
    worst = max(per_photo.items(), key=lambda kv: min(kv[1]))
    print(f"largest extra on one photo: {min(worst[1]) * 1000:.0f} ms ({worst[0]})")
    print(f"decoder process: start {start_s * 1000:.0f} ms (spawn), first decode incl. imports {first_use_s:.2f} s, "
          f"resident {child_rss:.0f} MiB after the run")


if __name__ == "__main__":
    main()
