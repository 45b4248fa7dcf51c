"""Fuzz harness: real photos and seeded mutations of them through decode -> enhance -> encode -> decode again.

Each case runs in one of a few worker processes (spawned once, the bundled model loaded once per worker, one
torch thread) with a per-case time limit: a case that hangs or kills its worker (native crash) is recorded as
such and the worker replaced, so one bad case never stops the run. A case passes when it yields an output that
decodes, or a specific per-file error: a PhotoError subclass (never the base class) whose text names the file
and has a non-empty reason. Anything else (another exception type, a hang, a crash, an output that does not
decode) fails.

Run it by hand: ``python -m tests.reliability.fuzzing --cases 2000 --seed 8`` (prints the summary as JSON).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import time
import traceback
from collections import Counter
from collections.abc import Iterable
from multiprocessing.connection import wait
from pathlib import Path

from tests.reliability.mutations import mutate

# Small real files with rich metadata: JPEG (EXIF, GPS, ICC, XMP, IPTC, maker notes, progressive, gray, CMYK),
# PNG (8/16-bit, palette + tRNS, alpha, ICC, eXIf), HEIF (8/10-bit, alpha, EXIF/XMP/IPTC), one WebP, one TIFF.
SOURCES: dict[str, str] = {
    "camera/iphone4s_gps.jpg": "JPEG",
    "camera/iphone4s_orient6_lensinfo.jpg": "JPEG",
    "camera/nikon_d100_icc_xmp.jpg": "JPEG",
    "camera/nikon_e4600_icc_xmp.jpg": "JPEG",
    "camera/nokia_n70_iptc.jpg": "JPEG",
    "camera/canon_s40.jpg": "JPEG",
    "camera/nikon_d800_broken_exif_dpi.jpg": "JPEG",
    "edge/gray.jpg": "JPEG",
    "edge/progressive_snake.jpg": "JPEG",
    "edge/cmyk.jpg": "JPEG",
    "edge/rgba.png": "PNG",
    "edge/palette_trns.png": "PNG",
    "edge/rgb_trns.png": "PNG",
    "edge/icc_profile.png": "PNG",
    "edge/rgb16.png": "PNG",
    "edge/rgba16.png": "PNG",
    "edge/gray16.png": "PNG",
    "heic/sony_a7s3_exif_xmp_iptc_64px.heic": "HEIF",
    "heic/rgba8.heif": "HEIF",
    "heic/rgb10bit.heif": "HEIF",
    "edge/webp_with_exif.webp": "WEBP",
    "edge/gray16.tif": "TIFF",
}
MAX_PIXELS = 20_000_000  # the sources are <= 0.3 MP: a mutated header above this is refused, not decoded
CASE_TIMEOUT_S = 60.0
PHOTO_REASONS = ("truncated photo", "corrupt photo", "unsupported photo", "too many pixels", "metadata too large",
                 "file too large", "metadata error", "storage error")


def mutated_cases(testdata: Path, count: int, seed: int) -> list[tuple[str, bytes, str]]:
    """``count`` (name, bytes, what was done) cases, round-robin over SOURCES; case i is reproducible from
    (seed, i) alone."""
    data = {rel: (testdata / rel).read_bytes() for rel in SOURCES}
    rels = sorted(SOURCES)
    cases = []
    for i in range(count):
        rel = rels[i % len(rels)]
        rng = random.Random(f"{seed}/{i}")
        blob, what = mutate(data[rel], SOURCES[rel], rng)
        stem, suffix = os.path.splitext(Path(rel).name)
        cases.append((f"m{i:05d}-{stem}{suffix}", blob, f"{rel}: {what}"))
    return cases


def edge_cases(testdata: Path) -> list[tuple[str, bytes, str]]:
    """Every file of testdata/edge, unchanged."""
    return [(f"edge-{p.name}", p.read_bytes(), f"edge/{p.name}") for p in sorted((testdata / "edge").iterdir())
            if p.is_file()]


def check_photo_error(exc: BaseException, name: str) -> str | None:
    """None when ``exc`` is a specific per-file error for ``name``; else what is wrong with it."""
    from dpe_core.io.errors import PhotoError

    if not isinstance(exc, PhotoError):
        return f"not a PhotoError: {type(exc).__name__}: {exc}"
    if type(exc) is PhotoError:
        return f"the unspecific base PhotoError: {exc}"
    text = str(exc)
    if not exc.detail.strip() or exc.detail == "no detail given" or not text.startswith(f"{name}: "):
        return f"reason empty or not naming the file: {text!r}"
    return None


def run_case(name: str, data: bytes, enhancer) -> dict:
    """decode -> enhance (paper) -> encode -> decode the output; the outcome as a small dict."""
    from dpe_core.io import IoLimits, decode_photo, encode_photo

    limits = IoLimits(max_pixels=MAX_PIXELS)
    stage = "decode"
    try:
        photo = decode_photo(data, name, limits=limits)
        stage = "enhance"
        enhanced = enhancer.enhance(photo, mode="paper") if enhancer is not None else photo.with_pixels(photo.pixels)
        stage = "encode"
        out = encode_photo(enhanced)
    except BaseException as exc:  # noqa: BLE001  (judged below: only specific PhotoErrors pass)
        if stage == "enhance":
            problem = f"enhance raised {type(exc).__name__}: {exc}"
        else:
            problem = check_photo_error(exc, name)
        if problem is None:
            return {"status": "error", "stage": stage, "error": type(exc).__name__, "reason": str(exc)[:300]}
        return {"status": "bad", "stage": stage, "problem": problem[:500],
                "traceback": "".join(traceback.format_exception(exc))[-2000:]}
    try:
        back = decode_photo(out, f"{name} (output)", limits=IoLimits())
    except BaseException as exc:  # noqa: BLE001
        return {"status": "bad", "stage": "output", "problem": f"output does not decode: {type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc))[-2000:]}
    if back.pixels.shape != enhanced.pixels.shape:
        return {"status": "bad", "stage": "output",
                "problem": f"output decodes to {back.pixels.shape}, enhanced was {enhanced.pixels.shape}"}
    return {"status": "ok", "format": photo.source_format, "size": [photo.width, photo.height], "out_bytes": len(out)}


def _worker(conn, model: str | None) -> None:  # pragma: no cover - runs in the worker processes
    import torch

    torch.set_num_threads(1)
    enhancer = None
    if model:
        from dpe_core.inference import Enhancer

        enhancer = Enhancer.from_pretrained(model, device="cpu")
    conn.send(("ready", None))
    while True:
        message = conn.recv()
        if message is None:
            return
        index, name, data = message
        conn.send((index, run_case(name, data, enhancer)))


class _Worker:
    def __init__(self, ctx, model: str | None):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, model), daemon=True)
        self.process.start()
        child.close()
        self.case: int | None = None
        self.started = 0.0
        self.ready = False

    def stop(self, kill: bool = False) -> None:
        try:
            if kill:
                self.process.kill()
            else:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)
        self.conn.close()


def run_cases(cases: Iterable[tuple[str, bytes, str]], workers: int = 2, model: str | None = "default",
              timeout_s: float = CASE_TIMEOUT_S) -> list[dict]:
    """Outcome of every case (in order), each with its name, what was done and seconds taken."""
    cases = list(cases)
    ctx = multiprocessing.get_context("spawn")
    pool = [_Worker(ctx, model) for _ in range(max(1, min(workers, len(cases))))]
    results: list[dict | None] = [None] * len(cases)
    todo = list(range(len(cases)))[::-1]
    try:
        while todo or any(w.case is not None for w in pool):
            for w in pool:
                if w.ready and w.case is None and todo:
                    w.case = todo.pop()
                    w.started = time.perf_counter()
                    name, data, _ = cases[w.case]
                    w.conn.send((w.case, name, data))
            now = time.perf_counter()
            waits = [timeout_s - (now - w.started) for w in pool if w.case is not None]
            ready = wait([w.conn for w in pool] + [w.process.sentinel for w in pool],
                         timeout=max(0.05, min(waits)) if waits else 120)
            for i, w in enumerate(pool):
                outcome = None
                if w.conn in ready:
                    try:
                        tag, payload = w.conn.recv()
                    except (EOFError, OSError):
                        tag, payload = None, None
                    if tag == "ready":
                        w.ready = True
                        continue
                    if tag is not None:
                        outcome = payload
                if outcome is None and w.case is not None and (not w.process.is_alive() or w.conn in ready):
                    outcome = {"status": "bad", "stage": "worker",
                               "problem": f"worker process died (exit code {w.process.exitcode}): native crash"}
                elif outcome is None and w.case is not None and time.perf_counter() - w.started > timeout_s:
                    outcome = {"status": "bad", "stage": "worker", "problem": f"hang: no answer in {timeout_s:.0f} s"}
                elif outcome is None and not w.process.is_alive():
                    raise RuntimeError(f"fuzz worker died before its first case (exit code {w.process.exitcode})")
                if outcome is None:
                    continue
                name, _, what = cases[w.case]
                results[w.case] = outcome | {"name": name, "what": what,
                                             "seconds": round(time.perf_counter() - w.started, 3)}
                w.case = None
                if outcome.get("stage") == "worker":  # replace the dead or hung worker
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, model)
    finally:
        for w in pool:
            w.stop(kill=w.case is not None)
    return [r for r in results if r is not None]


def summary(results: list[dict]) -> dict:
    """Counts for reports: cases, ok, specific errors by class, bad cases (with the first few)."""
    status = Counter(r["status"] for r in results)
    errors = Counter(r["error"] for r in results if r["status"] == "error")
    bad = [r for r in results if r["status"] == "bad"]
    return {"cases": len(results), "ok": status["ok"], "errors": status["error"], "bad": len(bad),
            "errors_by_class": dict(errors.most_common()), "slowest_s": max((r["seconds"] for r in results), default=0),
            "first_bad": [{k: r.get(k) for k in ("name", "what", "stage", "problem")} for r in bad[:10]]}


def main() -> None:  # pragma: no cover - manual runs
    from tests.conftest import TESTDATA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-model", action="store_true", help="skip the enhancer (IO only)")
    parser.add_argument("--bad", type=Path, help="write the bad cases' files into this folder")
    args = parser.parse_args()
    cases = edge_cases(TESTDATA) + mutated_cases(TESTDATA, args.cases, args.seed)
    started = time.perf_counter()
    results = run_cases(cases, workers=args.workers, model=None if args.no_model else "default")
    out = summary(results) | {"seconds": round(time.perf_counter() - started, 1)}
    if args.bad:
        args.bad.mkdir(parents=True, exist_ok=True)
        blobs = {name: blob for name, blob, _ in cases}
        for r in results:
            if r["status"] == "bad":
                (args.bad / r["name"]).write_bytes(blobs[r["name"]])
                (args.bad / (r["name"] + ".txt")).write_text(json.dumps(r, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
