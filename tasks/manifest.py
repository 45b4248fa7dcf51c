"""The destination's bookkeeping: manifest, per-shard records, run reports, and the plan that skips done work.

Layout inside a destination folder (any fsspec URL)::

    <dest>/.dpe/manifest.jsonl                 one record per input: its latest outcome (ok / error)
    <dest>/.dpe/records/<run>/shard-00003.jsonl  per-file records written by each shard as it finishes
    <dest>/.dpe/runs/<run>/report.jsonl         one record per listed input of that run (ok / skipped / error)
    <dest>/.dpe/runs/<run>/summary.json         counts, throughput, timings, settings of that run

Shard records are the source of truth while a run is going: a run killed before it wrote the manifest still
leaves the records of every finished shard, and the next run folds them in before planning. Plain Python:
no Prefect, no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fsspec.core import url_to_fs

from tasks.common import STATE_DIR, FileEntry, dumps_jsonl, join, loads_jsonl, read_jsonl, write_atomic

OUTPUT_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
# Inputs whose format is read but not written under its own extension keep their name with a new extension.
SAME_FORMAT_RENAMES = {".mpo": ".jpg"}  # stereo MPO: the first frame is enhanced and written as a JPEG


def manifest_url(dest_url: str) -> str:
    return join(dest_url, STATE_DIR, "manifest.jsonl")


def records_root(dest_url: str) -> str:
    return join(dest_url, STATE_DIR, "records")


def run_url(dest_url: str, run_id: str) -> str:
    return join(dest_url, STATE_DIR, "runs", run_id)


def settings_key(settings: dict[str, Any]) -> str:
    """Short stable hash of everything that shapes an output's bytes (model weights, mode, format, quality...)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_rel(rel: str, output_format: str) -> str:
    """Output path relative to the destination: the input's, with the extension changed when the format is."""
    name = rel.rsplit("/", 1)[-1]
    stem, ext = (rel[: -len(name.rsplit(".", 1)[1]) - 1], "." + name.rsplit(".", 1)[1]) if "." in name else (rel, "")
    if output_format == "same":
        return stem + SAME_FORMAT_RENAMES[ext.lower()] if ext.lower() in SAME_FORMAT_RENAMES else rel
    return stem + OUTPUT_EXTENSIONS[output_format]


WRITE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
                 ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF"}


def format_for_output(out_rel: str) -> str | None:
    """The encode_photo format an output's extension names, so every output's bytes match its name
    (None: no known extension, the source's own format)."""
    name = out_rel.rsplit("/", 1)[-1]
    return WRITE_FORMATS.get("." + name.rsplit(".", 1)[-1].lower()) if "." in name else None


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


@dataclass
class WorkItem:
    """One input to enhance: where it is, where its output goes, and why it is (re)done."""

    rel: str
    url: str
    size: int
    version: str
    output: str
    why: str = "new"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    todo: list[WorkItem] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # refused before any work (name collisions)

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.errors)


def plan(entries: Sequence[FileEntry], state: dict[str, dict[str, Any]], dest_sizes: dict[str, int],
         settings: str, output_format: str = "same", overwrite: bool = False) -> Plan:
    """Decide per input: skip (output exists, recorded ok with the same input, settings and size) or do.

    Redo when the output is missing, has another size than recorded (truncated, replaced), the input changed
    (size or version), the settings differ, or the last attempt failed. overwrite: redo everything.
    """
    result = Plan()
    claimed: dict[str, str] = {}
    for entry in entries:
        out = output_rel(entry.rel, output_format)
        if out in claimed:
            result.errors.append({"input": entry.rel, "output": out, "status": "error",
                                  "reason": f"output name {out} is already the output of {claimed[out]}",
                                  "input_size": entry.size})
            continue
        claimed[out] = entry.rel
        record = state.get(entry.rel)
        why = _why(entry, out, record, dest_sizes, settings, overwrite)
        if why is None:
            result.skipped.append({"input": entry.rel, "output": out, "status": "skipped",
                                   "reason": "already done", "input_size": entry.size,
                                   "output_size": record.get("output_size"),
                                   "output_sha256": record.get("output_sha256"),
                                   "settings": settings})
        else:
            result.todo.append(WorkItem(entry.rel, entry.url, entry.size, entry.version, out, why))
    return result


def _why(entry: FileEntry, out: str, record: dict[str, Any] | None, dest_sizes: dict[str, int], settings: str,
         overwrite: bool) -> str | None:
    if overwrite:
        return "overwrite"
    if record is None:
        return "new" if out not in dest_sizes else "output not recorded"
    if record.get("status") != "ok":
        return "previous attempt failed"
    if record.get("settings") != settings:
        return "settings changed"
    if record.get("input_size") != entry.size or (record.get("input_version") or "") != entry.version:
        return "input changed"
    if record.get("output") != out or out not in dest_sizes:
        return "output missing"
    if record.get("output_size") != dest_sizes[out]:
        return "output differs from the record"
    return None


def merge_state(state: dict[str, dict[str, Any]], records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """New manifest content: the old state updated with this run's ok/error records (skips keep theirs)."""
    merged = dict(state)
    for record in records:
        if record.get("status") in ("ok", "error"):
            merged[record["input"]] = {k: v for k, v in record.items() if k not in ("preview", "why")}
    return merged


def write_manifest(dest_url: str, state: dict[str, dict[str, Any]]) -> str:
    url = manifest_url(dest_url)
    write_atomic(url, dumps_jsonl(state[k] for k in sorted(state)))
    return url
