"""Fuzz: every file of testdata/edge and seeded mutations of real JPEGs, PNGs, HEICs (plus a WebP and a TIFF)
through decode -> enhance -> encode, directly and through the real `dpe enhance` flow.

Each case yields an output that decodes or a specific per-file error (a PhotoError subclass whose reason names
the file); no crash, no hang (per-case time limit), no undecodable output. The CI part runs 400 mutations
directly and 200 through one flow run (~1.5 min on 2 cores); the big run (2,000 direct + 500 through the flow)
is marked ``fuzz`` and runs only when selected::

    .venv/bin/python -m pytest -m fuzz tests/reliability/test_fuzz.py -p no:cacheprovider
    .venv/bin/python -m tests.reliability.fuzzing --cases 5000 --seed 9 --bad /tmp/fuzz-bad   # any size, by hand
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.reliability.fuzzing import PHOTO_REASONS, edge_cases, mutated_cases, run_cases, summary
from tests.tasks.helpers import latest_report, sha256_files

CI_DIRECT, CI_FLOW = 400, 200
BIG_DIRECT, BIG_FLOW = 2000, 500


def _assert_all_handled(results: list[dict], expected: int) -> dict:
    stats = summary(results)
    print("fuzz summary:", json.dumps(stats))
    assert stats["cases"] == expected
    assert stats["bad"] == 0, json.dumps(stats["first_bad"], indent=2)
    assert stats["ok"] > expected // 10 and stats["errors"] > expected // 10  # both paths exercised
    return stats


def _direct(testdata: Path, count: int, seed: int) -> dict:
    cases = edge_cases(testdata) + mutated_cases(testdata, count, seed)
    return _assert_all_handled(run_cases(cases, workers=2, model="default"), len(cases))


def test_edge_files_and_mutations_yield_outputs_or_specific_errors(testdata):
    _direct(testdata, CI_DIRECT, seed=2018)


def _flow(testdata: Path, tmp_path: Path, dask_address: str, count: int, seed: int) -> dict:
    """``count`` mutated photos through one enhance_archive run on the session's Prefect server and Dask
    cluster; every input reported once, every error specific, every output decodes, sources untouched."""
    from dpe_core.io import decode_photo
    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name, blob, _ in mutated_cases(testdata, count, seed):
        (src / name).write_bytes(blob)
    originals = sha256_files(src)
    params = EnhanceParams(source_url=str(src), dest_url=str(dst), dask_address=dask_address, shard_size=50,
                           mode="paper", model="default", registry_url=str(tmp_path / "registry"), previews=0,
                           max_pixels=20_000_000, decode_timeout_s=60)
    started = time.perf_counter()
    state = enhance_archive(params, return_state=True)
    seconds = time.perf_counter() - started
    assert state.is_completed() or "fail" in (state.name or "").lower(), state.message
    report = latest_report(dst)
    by_input = {r["input"]: r for r in report}
    assert len(report) == len(by_input) == count  # every input exactly once
    assert sorted(by_input) == sorted(originals)
    statuses = {"ok": 0, "error": 0}
    for rel, record in by_input.items():
        statuses[record["status"]] += 1
        if record["status"] == "error":
            reason = record["reason"]
            assert reason.startswith(f"{rel}: ") and any(f": {r}: " in reason for r in PHOTO_REASONS), record
        else:
            out = dst / record["output"]
            decode_photo(out.read_bytes(), str(out))  # the output decodes
    assert statuses["ok"] > count // 10 and statuses["error"] > count // 10, statuses
    assert sha256_files(src) == originals
    assert not list(dst.rglob(".dpe-tmp-*"))
    stats = statuses | {"cases": count, "seconds": round(seconds, 1)}
    print("fuzz flow run:", json.dumps(stats))
    return stats


def test_mutations_through_the_enhance_flow(testdata, tmp_path, dask_address):
    _flow(testdata, tmp_path, dask_address, CI_FLOW, seed=2019)


@pytest.mark.fuzz
def test_big_fuzz_run(testdata, tmp_path, dask_address):
    """>= 2,500 mutations (about 80 s on 2 cores; part of CI). `pytest -m fuzz` runs it alone."""
    _direct(testdata, BIG_DIRECT, seed=8)
    _flow(testdata, tmp_path, dask_address, BIG_FLOW, seed=9)
