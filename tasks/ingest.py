"""The ingest shard task: validate photos, hash them, summarise EXIF, optionally write small training copies.

Per file: read bytes (retried on storage errors) -> sha256 -> decode (size checked from the header first:
decompression bombs are refused before any pixel is decoded) -> checks (short side, pixel count) -> EXIF
summary -> optional copy (long side <= copy_size, upright, 8-bit RGB, no metadata) -> a record
(valid / invalid with reason).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from tasks.listing import FileEntry, read_input, source_place
from tasks.progress import ShardProgress
from tasks.retry import with_storage_retries
from tasks.storage_options import use_storage_block
from tasks.writer import guarded_writer

COPY_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
COPIES_DIR = "copies"  # training copies: <dataset>/copies/<rel with the copy format's extension>


class IngestJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    copies_url: str | None = None  # None: no training copies
    # Where the copies' folder lives and what is read: copies are written through the guarded writer of dest_url
    # (never into the source, never through a link); inputs are read as (source filesystem, root + '/' + rel).
    dest_url: str | None = None
    source_url: str = ""
    copy_size: int = 512
    copy_format: Literal["jpeg", "png"] = "jpeg"
    min_side: int = 32
    max_pixels: int | None = None
    storage_block: str | None = None
    progress_key: str = ""  # the run's key in per-file progress events (tasks/progress.py); "": none sent


class IngestShard(BaseModel):
    index: int
    entries: list[dict[str, Any]]  # FileEntry.to_dict()


class IngestResult(BaseModel):
    index: int
    records: list[dict[str, Any]]
    busy_s: float
    worker: str = Field("")


def copy_rel(rel: str, copy_format: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    stem = rel[: -len(name.rsplit(".", 1)[1]) - 1] if "." in name else rel
    return stem + COPY_EXTENSIONS[copy_format]


def training_copy(photo, size: int, copy_format: str) -> bytes:
    """Upright 8-bit RGB, long side min(size, original), Lanczos; no metadata (training needs pixels only)."""
    import numpy as np
    from PIL import Image

    pixels = photo.pixels
    if pixels.dtype != np.uint8:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    scale = size / max(image.size)
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    if copy_format == "png":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def ingest_one(entry: FileEntry, job: IngestJob) -> dict[str, Any]:
    """Validate one photo into a record; never raises for the photo's own problems."""
    from dpe_core.io import decode_photo, read_exif_summary
    from dpe_core.io.errors import PhotoError
    from dpe_core.io.limits import DEFAULT_LIMITS
    from dpe_core.io.redact import redact

    started = time.perf_counter()
    record: dict[str, Any] = {"path": entry.rel, "url": entry.url, "bytes": entry.size, "version": entry.version}

    def checked_read() -> bytes:  # size (and, locally, regular file) checked before a byte is read
        return read_input(source, entry.rel, max_bytes=DEFAULT_LIMITS.max_input_bytes)

    try:
        source = source_place(job.source_url, entry.rel, entry.url)
        data = with_storage_retries(checked_read, f"read {entry.url}")
    except PhotoError as exc:
        return record | {"status": "invalid", "reason": str(exc), "seconds": round(time.perf_counter() - started, 4)}
    except Exception as exc:
        detail = str(exc).strip() or ("out of memory" if isinstance(exc, MemoryError) else "no detail given")
        return record | {"status": "invalid", "reason": redact(f"{entry.rel}: cannot be read: {type(exc).__name__}: "
                                                               f"{detail}"),
                         "seconds": round(time.perf_counter() - started, 4)}
    record["sha256"] = hashlib.sha256(data).hexdigest()
    record["bytes"] = len(data)
    try:
        photo = decode_photo(data, entry.rel, max_pixels=job.max_pixels)
    except PhotoError as exc:
        return record | {"status": "invalid", "reason": str(exc), "seconds": round(time.perf_counter() - started, 4)}
    except Exception as exc:  # a decoder bug is still this file's problem, not the run's
        detail = str(exc).strip() or ("out of memory" if isinstance(exc, MemoryError) else "no detail given")
        return record | {"status": "invalid", "reason": redact(f"{entry.rel}: {type(exc).__name__}: {detail}"),
                         "seconds": round(time.perf_counter() - started, 4)}
    record |= {"width": photo.width, "height": photo.height, "format": photo.source_format,
               "mode": photo.source_mode, "bit_depth": photo.bit_depth, "alpha": photo.alpha is not None,
               "icc": photo.icc_profile is not None, "xmp": photo.xmp is not None,
               "orientation_applied": photo.orientation_applied, "warnings": list(photo.warnings)}
    try:
        record["exif"] = read_exif_summary(photo).model_dump(mode="json", exclude_none=True)
    except Exception as exc:  # a summary is informative; a photo with odd EXIF is still a valid photo
        record["exif"] = {"warning": f"{type(exc).__name__}: {exc}"}
    if min(photo.width, photo.height) < job.min_side:
        return record | {"status": "invalid",
                         "reason": f"{entry.rel}: {photo.width}x{photo.height} is smaller than {job.min_side} px",
                         "seconds": round(time.perf_counter() - started, 4)}
    record["status"] = "valid"
    if job.copies_url:
        rel = copy_rel(entry.rel, job.copy_format)
        blob = training_copy(photo, job.copy_size, job.copy_format)
        writer = guarded_writer(job.dest_url or job.copies_url, job.source_url or None)
        target = f"{COPIES_DIR}/{rel}" if job.dest_url else rel
        try:
            with_storage_retries(lambda: writer.write(target, blob, input_rel=entry.rel, source=source),
                                 f"write {writer.location(target)}")
            record["copy"] = rel
        except Exception as exc:
            record |= {"status": "invalid",
                       "reason": f"training copy {writer.location(target)} cannot be written: {exc}"}
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record


def process_ingest_shard(shard: IngestShard, job: IngestJob) -> IngestResult:
    use_storage_block(job.storage_block)
    started = time.perf_counter()
    progress = ShardProgress(job.progress_key, shard.index, ok="valid")
    records: list[dict[str, Any]] = []
    for entry in shard.entries:
        records.append(ingest_one(FileEntry(**entry), job))
        progress.update(records)
    progress.update(records, force=True)
    return IngestResult(index=shard.index, records=records, busy_s=time.perf_counter() - started,
                        worker=f"{socket.gethostname()}:{os.getpid()}")


@task(name="ingest-shard", task_run_name="ingest-shard-{shard.index}", cache_policy=NO_CACHE)
def ingest_shard(shard: IngestShard, job: IngestJob) -> IngestResult:
    result = process_ingest_shard(shard, job)
    invalid = sum(r["status"] != "valid" for r in result.records)
    get_run_logger().info("shard %d: %d photos, %d invalid, %.1f s", shard.index, len(result.records), invalid,
                          result.busy_s)
    return result
