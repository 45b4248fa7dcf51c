"""ingest_dataset: validate a folder of photos into a dataset manifest, optionally with small training copies.

Outputs under dest_url::

    manifest.jsonl   one record per listed file: status valid/invalid (or skipped: a link not followed), reason,
                     size, format, mode, bit depth, sha256, EXIF summary, copy path, duplicate_of (same bytes as
                     an earlier path)
    summary.json     counts and settings
    copies/<rel>.jpg training copies (long side <= copy_size), only for valid photos, when copies=True

A rerun reuses the records of unchanged files (same size and version stamp, copy present with the same
settings), so an interrupted training job that re-ingests its data does no repeated work.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed

from dpe_core.io.places import artifact_key, check_destinations, join, printable
from flows.artifacts import Progress, publish_summary
from flows.cluster import dask_cluster
from flows.outcome import final_state, log_failures
from flows.params import IngestParams
from flows.progress import RunProgress, announce_run, emit
from tasks.ingest import COPIES_DIR, IngestJob, IngestResult, IngestShard, copy_rel, ingest_shard
from tasks.jsonl import dumps_json, dumps_jsonl, read_jsonl
from tasks.listing import FileEntry, Listing, list_sizes
from tasks.plan import name_conflicts
from tasks.storage import STORAGE_RETRIES, list_inputs
from tasks.storage_options import use_storage_block
from tasks.writer import GuardedWriter


def manifest_url(dest_url: str) -> str:
    return join(dest_url, "manifest.jsonl")


def copies_url(dest_url: str) -> str:
    return join(dest_url, COPIES_DIR)


@task(name="read-dataset", **STORAGE_RETRIES)
def read_previous(dest_url: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    previous = {r["path"]: r for r in read_jsonl(manifest_url(dest_url)) if "path" in r}
    return previous, list_sizes(copies_url(dest_url))


@task(name="write-dataset", **STORAGE_RETRIES)
def write_dataset(dest_url: str, records: list[dict[str, Any]], summary: dict[str, Any],
                  source_url: str | None = None) -> str:
    """manifest.jsonl and summary.json through the dataset's guarded writer."""
    writer = GuardedWriter(dest_url, [source_url] if source_url else [])
    url = manifest_url(dest_url)
    writer.write_url(url, dumps_jsonl(records))
    writer.write_url(join(dest_url, "summary.json"), dumps_json(summary))
    return url


def _not_read_record(left_out: dict[str, Any], source_url: str) -> dict[str, Any]:
    """A listing's left-out input as a manifest record: a link not followed is 'skipped', the rest 'invalid'."""
    return {"path": left_out["input"], "url": join(source_url, left_out["input"]),
            "bytes": left_out.get("input_size"), "status": "skipped" if left_out["status"] == "skipped" else "invalid",
            "reason": left_out["reason"]}


def copy_conflicts(entries: list[FileEntry], copy_format: str) -> dict[str, str]:
    """{path: reason} for photos whose training copies would be one file (a.png + a.jpg, A.JPG + a.jpg, NFC/NFD
    twins): each is reported naming the others, none gets a copy."""
    return name_conflicts({e.rel: copy_rel(e.rel, copy_format) for e in entries}, what="training copy")


def _reusable(entry: FileEntry, old: dict[str, Any] | None, settings: dict[str, Any], copies: dict[str, int]) -> bool:
    if not old or old.get("settings") != settings or old.get("status") != "valid":
        return False
    if old.get("bytes") != entry.size or (old.get("version") or "") != entry.version:
        return False
    return not settings["copies"] or old.get("copy") in copies


@flow(name="ingest-dataset", description="Validate photos into a dataset manifest; optional training copies.")
def ingest_dataset(params: IngestParams) -> dict[str, Any]:
    logger = get_run_logger()
    announce_run("ingest")
    started = time.perf_counter()
    use_storage_block(params.storage_block)
    # Before any work: the dataset and its copies folder may be neither the source, in it, nor hold it.
    check_destinations(params.source_url, params.destinations())
    listing: Listing = list_inputs(params.source_url, params.include, params.exclude, list(params.formats),
                                   params.include_hidden, params.storage_block)
    previous, copies = read_previous(params.dest_url)
    settings = {"copies": params.copies, "copy_size": params.copy_size, "copy_format": params.copy_format,
                "min_side": params.min_side, "max_pixels": params.max_pixels}
    conflicts = copy_conflicts(listing.entries, params.copy_format) if params.copies else {}
    entries = [e for e in listing.entries if e.rel not in conflicts]
    reused = [previous[e.rel] for e in entries if _reusable(e, previous.get(e.rel), settings, copies)]
    reused_paths = {r["path"] for r in reused}
    todo = [e for e in entries if e.rel not in reused_paths]
    logger.info("%d files under %s: %d to check, %d unchanged since the last ingest, %d refused, %d not read",
                len(listing.entries) + len(listing.left_out), params.source_url, len(todo), len(reused),
                len(conflicts), len(listing.left_out))
    total = len(listing.entries) + len(listing.left_out)
    emit({"event": "planned", "total": total, "todo": len(todo), "skipped": total - len(todo)})
    records: list[dict[str, Any]] = [r | {"reused": True} for r in reused]
    records += [{"path": e.rel, "url": e.url, "bytes": e.size, "version": e.version, "status": "invalid",
                 "reason": conflicts[e.rel]} for e in listing.entries if e.rel in conflicts]
    records += [_not_read_record(r, params.source_url) for r in listing.left_out]
    shards_n = 0
    if todo:
        job = IngestJob(copies_url=copies_url(params.dest_url) if params.copies else None,
                        dest_url=params.dest_url, source_url=params.source_url,
                        copy_size=params.copy_size, copy_format=params.copy_format, min_side=params.min_side,
                        max_pixels=params.max_pixels, storage_block=params.storage_block,
                        progress_key=f"ingest-{uuid.uuid4().hex}")
        artifact = None
        with contextlib.suppress(Exception):  # reporting only
            artifact = Progress(f"Ingesting {params.source_url} -> {params.dest_url}")
        with dask_cluster(params) as (cluster, client), \
                RunProgress(job.progress_key, total, total - len(todo), client=client, artifact=artifact,
                            log=logger.info, unit="files", job="ingest") as progress:
            size = params.shard_size or max(8, min(512, math.ceil(len(todo) / (3 * cluster.workers))))
            shards = [IngestShard(index=i, entries=[e.to_dict() for e in todo[start:start + size]])
                      for i, start in enumerate(range(0, len(todo), size))]
            shards_n = len(shards)
            with cluster.task_runner() as runner:
                futures = {runner.submit(ingest_shard, {"shard": s, "job": job}): s for s in shards}
                for future in as_completed(list(futures)):
                    shard = futures[future]
                    try:
                        result: IngestResult = future.result()
                        shard_records = [r | {"settings": settings} for r in result.records]
                    except Exception as exc:  # a lost worker: its files are reported, the run goes on
                        reason = f"shard {shard.index} failed: {type(exc).__name__}: {exc}"
                        logger.error(reason)
                        shard_records = [{"path": e["rel"], "url": e["url"], "bytes": e["size"],
                                          "status": "invalid", "reason": reason} for e in shard.entries]
                    records.extend(shard_records)
                    progress.shard_done(shard.index, shard_records, ok="valid")
    records.sort(key=lambda r: r["path"])
    first_by_hash: dict[str, str] = {}
    for record in records:
        record.pop("duplicate_of", None)
        digest = record.get("sha256")
        if digest and record["status"] == "valid":
            if digest in first_by_hash:
                record["duplicate_of"] = first_by_hash[digest]
            else:
                first_by_hash[digest] = record["path"]
    valid = sum(r["status"] == "valid" for r in records)
    invalid = [r for r in records if r["status"] == "invalid"]
    skipped = [r for r in records if r["status"] == "skipped"]
    summary = {"source_url": params.source_url, "dest_url": params.dest_url, "total": len(records), "valid": valid,
               "invalid": len(invalid), "skipped": len(skipped),
               "duplicates": sum("duplicate_of" in r for r in records),
               "reused": len(reused), "shards": shards_n, "settings": settings,
               "copies_url": copies_url(params.dest_url) if params.copies else None,
               "seconds": round(time.perf_counter() - started, 2)}
    summary["manifest_url"] = write_dataset(params.dest_url, [{k: v for k, v in r.items() if k != "reused"}
                                                              for r in records], summary, params.source_url)
    lines = [f"# Ingest {params.source_url}", "", f"**{valid}** valid, **{len(invalid)}** invalid of "
             f"**{len(records)}** files; manifest `{summary['manifest_url']}`", ""]
    if invalid or skipped:
        lines += ["| file | reason |", "|---|---|"]
        lines += [f"| `{_cell(r['path'])}` | {_cell(r.get('reason', ''))} |" for r in (invalid + skipped)[:50]]
    with contextlib.suppress(Exception):
        publish_summary("\n".join(lines), key=artifact_key("ingest", params.dest_url),
                        description=f"{params.source_url} -> {params.dest_url}")
    message = f"{valid} valid, {len(invalid)} invalid" + (f", {len(skipped)} not read (link policy)" if skipped
                                                            else "") + f" of {len(records)} files"
    log_failures(logger, invalid, name_key="path", what="invalid")
    logger.info(message)
    return final_state("ingest", {"ok": valid, "failed": len(invalid), "skipped": len(skipped),
                                  "total": len(records)}, message, summary, dest_url=params.dest_url)


def _cell(text: Any) -> str:
    """Text for a markdown table cell (names may hold '|' or newlines)."""
    return printable(text).replace("|", "/").replace("\n", " ")
