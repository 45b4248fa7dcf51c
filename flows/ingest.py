"""ingest_dataset: validate a folder of photos into a dataset manifest, optionally with small training copies.

Outputs under dest_url::

    manifest.jsonl   one record per listed file: status valid/invalid, reason, size, format, mode, bit depth,
                     sha256, EXIF summary, copy path, duplicate_of (same bytes as an earlier path)
    summary.json     counts and settings
    copies/<rel>.jpg training copies (long side <= copy_size), only for valid photos, when copies=True

A rerun reuses the records of unchanged files (same size and version stamp, copy present with the same
settings), so an interrupted training job that re-ingests its data does no repeated work.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.states import Completed

from flows.artifacts import artifact_key, publish_summary
from flows.cluster import dask_cluster
from flows.params import IngestParams
from tasks.common import (
    FileEntry,
    dumps_jsonl,
    join,
    list_sizes,
    read_jsonl,
    use_storage_block,
    write_atomic,
    write_json,
)
from tasks.ingest import IngestJob, IngestResult, IngestShard, ingest_shard
from tasks.storage import STORAGE_RETRIES, list_inputs


def manifest_url(dest_url: str) -> str:
    return join(dest_url, "manifest.jsonl")


def copies_url(dest_url: str) -> str:
    return join(dest_url, "copies")


@task(name="read-dataset", **STORAGE_RETRIES)
def read_previous(dest_url: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    previous = {r["path"]: r for r in read_jsonl(manifest_url(dest_url)) if "path" in r}
    return previous, list_sizes(copies_url(dest_url))


@task(name="write-dataset", **STORAGE_RETRIES)
def write_dataset(dest_url: str, records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    url = manifest_url(dest_url)
    write_atomic(url, dumps_jsonl(records))
    write_json(join(dest_url, "summary.json"), summary)
    return url


def _reusable(entry: FileEntry, old: dict[str, Any] | None, settings: dict[str, Any], copies: dict[str, int]) -> bool:
    if not old or old.get("settings") != settings or old.get("status") != "valid":
        return False
    if old.get("bytes") != entry.size or (old.get("version") or "") != entry.version:
        return False
    return not settings["copies"] or old.get("copy") in copies


@flow(name="ingest-dataset", description="Validate photos into a dataset manifest; optional training copies.")
def ingest_dataset(params: IngestParams) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.perf_counter()
    use_storage_block(params.storage_block)
    entries = list_inputs(params.source_url, params.include, params.exclude, list(params.formats),
                          params.include_hidden, [params.dest_url], params.storage_block)
    previous, copies = read_previous(params.dest_url)
    settings = {"copies": params.copies, "copy_size": params.copy_size, "copy_format": params.copy_format,
                "min_side": params.min_side, "max_pixels": params.max_pixels}
    reused = [previous[e.rel] for e in entries if _reusable(e, previous.get(e.rel), settings, copies)]
    reused_paths = {r["path"] for r in reused}
    todo = [e for e in entries if e.rel not in reused_paths]
    logger.info("%d files under %s: %d to check, %d unchanged since the last ingest", len(entries),
                params.source_url, len(todo), len(reused))
    records: list[dict[str, Any]] = [r | {"reused": True} for r in reused]
    shards_n = 0
    if todo:
        job = IngestJob(copies_url=copies_url(params.dest_url) if params.copies else None,
                        copy_size=params.copy_size, copy_format=params.copy_format, min_side=params.min_side,
                        max_pixels=params.max_pixels, storage_block=params.storage_block)
        with dask_cluster(params) as (cluster, _client):
            from prefect_dask import DaskTaskRunner

            size = params.shard_size or max(8, min(512, math.ceil(len(todo) / (3 * cluster.workers))))
            shards = [IngestShard(index=i, entries=[e.to_dict() for e in todo[start:start + size]])
                      for i, start in enumerate(range(0, len(todo), size))]
            shards_n = len(shards)
            with DaskTaskRunner(address=cluster.address) as runner:
                futures = {runner.submit(ingest_shard, {"shard": s, "job": job}): s for s in shards}
                for future in as_completed(list(futures)):
                    shard = futures[future]
                    try:
                        result: IngestResult = future.result()
                        records.extend(r | {"settings": settings} for r in result.records)
                    except Exception as exc:  # a lost worker: its files are reported, the run goes on
                        reason = f"shard {shard.index} failed: {type(exc).__name__}: {exc}"
                        logger.error(reason)
                        records.extend({"path": e["rel"], "url": e["url"], "bytes": e["size"], "status": "invalid",
                                        "reason": reason} for e in shard.entries)
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
    invalid = [r for r in records if r["status"] != "valid"]
    summary = {"source_url": params.source_url, "dest_url": params.dest_url, "total": len(records), "valid": valid,
               "invalid": len(invalid), "duplicates": sum("duplicate_of" in r for r in records),
               "reused": len(reused), "shards": shards_n, "settings": settings,
               "copies_url": copies_url(params.dest_url) if params.copies else None,
               "seconds": round(time.perf_counter() - started, 2)}
    summary["manifest_url"] = write_dataset(params.dest_url, [{k: v for k, v in r.items() if k != "reused"}
                                                              for r in records], summary)
    lines = [f"# Ingest {params.source_url}", "", f"**{valid}** valid, **{len(invalid)}** invalid of "
             f"**{len(records)}** files; manifest `{summary['manifest_url']}`", ""]
    if invalid:
        lines += ["| file | reason |", "|---|---|"]
        lines += [f"| `{r['path']}` | {str(r.get('reason', '')).replace('|', '/')} |" for r in invalid[:50]]
    with contextlib.suppress(Exception):
        publish_summary("\n".join(lines), key=artifact_key("ingest", params.dest_url),
                        description=f"{params.source_url} -> {params.dest_url}")
    message = f"{valid} valid, {len(invalid)} invalid of {len(records)} files"
    logger.info(message)
    return Completed(message=message, data=summary)
