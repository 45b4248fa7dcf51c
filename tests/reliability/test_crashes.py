"""Crashes: a Dask worker SIGKILLed mid-run, the whole run killed during a 100 MB write, the flow process killed
between writing the manifest and clearing the run's shard records. Real `dpe enhance` processes, real worker
processes; moments are found on the filesystem (records files, inotify), never through hooks in the code."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.conftest import REPO, dpe_command
from tests.reliability.fswatch import IN_CREATE, IN_MOVED_TO, Watch
from tests.tasks.helpers import ARCHIVE, image_files, latest_report, make_folder, read_jsonl, sha256_files


def derived_photos(testdata: Path, root: Path, count: int, seed: int = 7) -> list[str]:
    """count small JPEGs cut from the real natural photos (random crops, resized to 96-256 px)."""
    from PIL import Image

    rng = random.Random(seed)
    sources = []
    for name in ("chelsea.png", "kpa_pool.jpg", "kpa_snow.jpg", "egret.jpg", "kpa_wayne.jpg"):
        image = Image.open(testdata / "natural" / name).convert("RGB")
        image.thumbnail((1024, 1024))
        sources.append(image)
    rels = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = rng.randint(w // 4, w), rng.randint(h // 4, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        crop.thumbnail((rng.randint(96, 256),) * 2)
        rel = f"set{i // 100:02d}/img{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        (root / rel).write_bytes(buffer.getvalue())
        rels.append(rel)
    return rels


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(dpe_command(*args), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run(args: list[str], env: dict) -> dict:
    done = subprocess.run(dpe_command(*args, "--json"), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _kill_family(process: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL a process and every process under it (each by its PID, gathered first): a crashed machine."""
    family = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.communicate(timeout=60)
    psutil.wait_procs(family, timeout=30)
    return family


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _outputs_decode(dst: Path, rels: list[str]) -> None:
    from dpe_core.io import decode_photo

    for rel in rels:
        decode_photo((dst / rel).read_bytes(), rel)


def test_a_sigkilled_worker_costs_only_its_shard_in_flight(cli_env, model_ref, testdata, tmp_path):
    src = tmp_path / "archive"
    rels = derived_photos(testdata, src, 300)
    originals = sha256_files(src)
    dst = tmp_path / "enhanced"
    args = ["enhance", str(src), str(dst), "--workers", "2", "--shard-size", "50", "--mode", "paper", "--model",
            model_ref, "--registry", str(tmp_path / "registry"), "--json"]
    process = _start(args, cli_env)
    records = dst / ".dpe" / "records"
    finished: dict[str, list[dict]] = {}  # shard file -> its records, for shards complete before the kill
    try:
        deadline = time.monotonic() + 600
        victim = None
        while victim is None:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no shard finished"
            for path in records.glob("*/shard-*.jsonl"):
                saved = read_jsonl(path)
                if len(saved) == 50:  # a whole shard, recorded as it ended
                    victim = int(saved[0]["worker"].rsplit(":", 1)[1])
                    break
            time.sleep(0.05)
        workers = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        assert victim in workers  # a Dask worker process of this run, found through its own records
        for path in records.glob("*/shard-*.jsonl"):
            saved = read_jsonl(path)
            if len(saved) == 50:
                finished[path.name] = saved
        written = {r["input"]: _identity(dst / r["output"]) for saved in finished.values() for r in saved}
        markers = [path.with_name(name.replace(".jsonl", ".attempt.json")) for name in finished
                   for path in records.glob(f"*/{name}")]
        os.kill(victim, signal.SIGKILL)
        attempts = {}  # a shard Dask runs again rewrites its attempt marker (tasks/enhance.py ShardLedger)
        while process.poll() is None:
            for marker in markers:
                try:
                    attempts[marker.name] = max(attempts.get(marker.name, 1), json.loads(marker.read_text())["attempt"])
                except (OSError, ValueError):
                    pass
            time.sleep(0.05)
        out, err = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["counts"] == {"ok": 300, "skipped": 0, "error": 0}
    report = latest_report(dst)
    assert sorted(r["input"] for r in report) == sorted(rels)  # every input exactly once
    by_input = {r["input"]: r for r in report}
    # The shards that had finished before the kill (some on the killed worker) were not computed again: their
    # records in the report are the ones written before the kill (same worker, same finish time, same bytes),
    # and their outputs are the very files written then (a recomputed shard replaces each: a new inode).
    assert any(int(r[0]["worker"].rsplit(":", 1)[1]) == victim for r in finished.values())
    for saved in finished.values():
        for record in saved:
            assert by_input[record["input"]] == record
    assert {rel: _identity(dst / by_input[rel]["output"]) for rel in written} == written
    # Finished shards' futures are released as their results arrive, so the kill re-runs none of them, except
    # at most the one whose result was still in flight (records complete, result not yet at the flow); Dask
    # runs that one again and the new attempt resumes from its records, redoing nothing (checked above: same
    # records, same output files).
    assert sum(attempt > 1 for attempt in attempts.values()) <= 1, attempts
    assert image_files(dst) == sorted(rels)
    _outputs_decode(dst, rels[::10])
    assert sha256_files(src) == originals


def _big_tiff(testdata: Path, path: Path, side: int = 4096) -> None:
    """A 16-bit RGB TIFF of side x side px (uncompressed, ~100 MB at 4096) from a real photo plus noise, so that
    its enhanced output (Deflate) stays about as large."""
    import numpy as np
    from PIL import Image

    from dpe_core.io.tiff import encode_tiff

    photo = Image.open(testdata / "natural" / "chelsea.png").convert("RGB").resize((side, side),
                                                                                  Image.Resampling.NEAREST)
    pixels = np.asarray(photo).astype(np.uint16) * 257
    pixels ^= np.frombuffer(os.urandom(pixels.nbytes), dtype=np.uint16).reshape(pixels.shape) & 0x0FFF
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_tiff(pixels, compress=False))


def test_run_killed_during_a_100_mb_write_then_rerun_finishes_and_a_third_does_nothing(cli_env, model_ref,
                                                                                        testdata, tmp_path):
    small = {k: v for k, v in ARCHIVE.items() if k.startswith(("2004/", "2011/"))}
    src = make_folder(tmp_path / "archive", testdata, small)
    _big_tiff(testdata, src / "big" / "scan.tif")
    originals = sha256_files(src)
    everything = sorted(small) + ["big/scan.tif"]
    dst = tmp_path / "enhanced"
    (dst / "big").mkdir(parents=True)
    args = ["enhance", str(src), str(dst), "--workers", "1", "--mode", "full", "--model", model_ref, "--registry",
            str(tmp_path / "registry")]
    with Watch() as watch:
        watch.add(str(dst / "big"), IN_CREATE)
        process = _start(args, cli_env)
        try:
            watch.wait(lambda folder, name, mask: name.startswith(".dpe-tmp-"), 900, lambda: process.poll() is None)
            time.sleep(0.02)  # well inside the write of ~100 MB (and its fsync)
        finally:
            _kill_family(process)
    left = list(dst.rglob(".dpe-tmp-*"))
    assert left, "the kill landed after the write had finished"
    assert not (dst / "big" / "scan.tif").exists()

    second = _run(args, cli_env)
    assert second["counts"]["error"] == 0
    assert second["counts"]["ok"] + second["counts"]["skipped"] == len(everything)
    assert not list(dst.rglob(".dpe-tmp-*"))
    assert image_files(dst) == everything  # no duplicates, no partial files
    assert (dst / "big" / "scan.tif").stat().st_size > 90e6
    _outputs_decode(dst, everything)
    mtimes = {rel: (dst / rel).stat().st_mtime_ns for rel in everything}

    third = _run(args, cli_env)
    assert third["counts"] == {"ok": 0, "skipped": len(everything), "error": 0}
    assert third["cluster"] is None  # nothing to do: not even a cluster
    assert {rel: (dst / rel).stat().st_mtime_ns for rel in everything} == mtimes
    assert sha256_files(src) == originals


def test_flow_killed_between_manifest_and_clearing_records(dask_address, cli_env, model_ref, testdata, tmp_path):
    src = make_folder(tmp_path / "archive", testdata, ARCHIVE)
    originals = sha256_files(src)
    dst = tmp_path / "enhanced"
    args = ["enhance", str(src), str(dst), "--dask-address", dask_address, "--mode", "paper", "--model", model_ref,
            "--registry", str(tmp_path / "registry")]
    state = dst / ".dpe"
    state.mkdir(parents=True)
    for _attempt in range(3):  # the window is a few ms wide (a summary write and its fsync): retry if missed
        with Watch() as watch:
            watch.add(str(state), IN_MOVED_TO)
            process = _start(args, cli_env)
            try:
                watch.wait(lambda folder, name, mask: name == "manifest.jsonl", 600,
                           lambda p=process: p.poll() is None)
                process.send_signal(signal.SIGKILL)  # the flow process only; the workers are the session's
                process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        if list((state / "records").rglob("shard-*.jsonl")):  # killed before the clearing began
            break
        shutil.rmtree(dst)  # missed the moment: start again from nothing
        state.mkdir(parents=True)
    else:
        raise AssertionError("three runs finished clearing their records before the kill")
    manifest = read_jsonl(state / "manifest.jsonl")
    assert sorted(r["input"] for r in manifest) == sorted(ARCHIVE)
    assert list((state / "records").rglob("shard-*.jsonl"))  # the moment: manifest written, records still there

    second = _run(args, cli_env)
    assert second["counts"] == {"ok": 0, "skipped": len(ARCHIVE), "error": 0}
    assert not (state / "records").exists()
    assert not list(dst.rglob(".dpe-tmp-*"))
    assert image_files(dst) == sorted(ARCHIVE)
    assert sorted(r["input"] for r in latest_report(dst)) == sorted(ARCHIVE)
    mtimes = {rel: (dst / rel).stat().st_mtime_ns for rel in ARCHIVE}
    third = _run(args, cli_env)
    assert third["counts"] == {"ok": 0, "skipped": len(ARCHIVE), "error": 0}
    assert {rel: (dst / rel).stat().st_mtime_ns for rel in ARCHIVE} == mtimes
    assert sha256_files(src) == originals
