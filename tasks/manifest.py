"""The destination's bookkeeping: manifest, per-shard records, run reports.

Layout inside a destination folder (any fsspec URL)::

    <dest>/.dpe/manifest.jsonl                 one record per input: its latest outcome (ok / error)
    <dest>/.dpe/records/<run>/shard-00003.jsonl  per-file records written by each shard as it finishes
    <dest>/.dpe/runs/<run>/report.jsonl         one record per listed input of that run (ok / skipped / error)
    <dest>/.dpe/runs/<run>/summary.json         counts, throughput, timings, settings of that run

Shard records are the source of truth while a run is going: a run killed before it wrote the manifest still
leaves the records of every finished shard, and the next run folds them in before planning. Every write goes
through the destination's guarded writer (tasks.writer). The plan itself: tasks.plan. Plain Python: no Prefect,
no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fsspec.core import url_to_fs

from dpe_core.io.places import join
from tasks.jsonl import dumps_jsonl, loads_jsonl, read_jsonl
from tasks.writer import GuardedWriter, guarded_writer

STATE_DIR = ".dpe"  # bookkeeping folder inside a destination: manifest, shard records, run reports


def manifest_url(dest_url: str) -> str:
    return join(dest_url, STATE_DIR, "manifest.jsonl")


def records_root(dest_url: str) -> str:
    return join(dest_url, STATE_DIR, "records")


def run_url(dest_url: str, run_id: str) -> str:
    return join(dest_url, STATE_DIR, "runs", run_id)


def load_state(dest_url: str) -> dict[str, dict[str, Any]]:
    """{input rel path: latest record} from the manifest plus the shard records of unfinished runs."""
    state: dict[str, dict[str, Any]] = {r["input"]: r for r in read_jsonl(manifest_url(dest_url)) if "input" in r}
    for record in sorted(pending_records(dest_url), key=lambda r: r.get("finished") or ""):
        if record.get("status") in ("ok", "error") and "input" in record:
            state[record["input"]] = record
    return state


def pending_records(dest_url: str) -> list[dict[str, Any]]:
    """Records of shards whose run has not merged them into the manifest (e.g. the flow process was killed)."""
    fs, root = url_to_fs(records_root(dest_url))
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(fs.find(root)):
        if path.endswith(".jsonl"):
            out.extend(loads_jsonl(fs.cat_file(path), path))
    return out


def clear_records(dest_url: str) -> None:
    """Remove the shard records folder once the manifest holds them."""
    fs, root = url_to_fs(records_root(dest_url))
    fs.invalidate_cache(root)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def merge_state(state: dict[str, dict[str, Any]], records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """New manifest content: the old state updated with this run's ok/error records (skips keep theirs)."""
    merged = dict(state)
    for record in records:
        if record.get("status") in ("ok", "error"):
            merged[record["input"]] = {k: v for k, v in record.items() if k not in ("preview", "why")}
    return merged


def write_manifest(dest_url: str, state: dict[str, dict[str, Any]], writer: GuardedWriter | None = None) -> str:
    """The manifest (one record per input, sorted) through the destination's guarded writer (default: one that
    knows no source, still refusing links and odd names); returns its URL."""
    url = manifest_url(dest_url)
    (writer or guarded_writer(dest_url)).write_url(url, dumps_jsonl(state[k] for k in sorted(state)))
    return url
