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

from tasks.common import FileEntry, join, use_storage_block
from tasks.retry import with_storage_retries

COPY_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}


class IngestJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    copies_url: str | None = None  # None: no training copies
    copy_size: int = 512
    copy_format: Literal["jpeg", "png"] = "jpeg"
    min_side: int = 32
    max_pixels: int | None = None
    storage_block: str | None = None


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
    from dpe_core.io.storage import read_bytes, write_bytes_atomic

    started = time.perf_counter()
    record: dict[str, Any] = {"path": entry.rel, "url": entry.url, "bytes": entry.size, "version": entry.version}
    try:
        data = with_storage_retries(lambda: read_bytes(entry.url), f"read {entry.url}")
    except Exception as exc:
        return record | {"status": "invalid", "reason": f"cannot be read: {type(exc).__name__}: {exc}",
                         "seconds": round(time.perf_counter() - started, 4)}
    record["sha256"] = hashlib.sha256(data).hexdigest()
    record["bytes"] = len(data)
    try:
        photo = decode_photo(data, entry.rel, max_pixels=job.max_pixels)
    except PhotoError as exc:
        return record | {"status": "invalid", "reason": str(exc), "seconds": round(time.perf_counter() - started, 4)}
    except Exception as exc:  # a decoder bug is still this file's problem, not the run's
        return record | {"status": "invalid", "reason": f"{entry.rel}: {type(exc).__name__}: {exc}",
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
        url = join(job.copies_url, rel)
        try:
            with_storage_retries(lambda: write_bytes_atomic(url, blob), f"write {url}")
            record["copy"] = rel
        except Exception as exc:
            record |= {"status": "invalid", "reason": f"training copy {url} cannot be written: {exc}"}
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record


def process_ingest_shard(shard: IngestShard, job: IngestJob) -> IngestResult:
    use_storage_block(job.storage_block)
    started = time.perf_counter()
    records = [ingest_one(FileEntry(**e), job) for e in shard.entries]
    return IngestResult(index=shard.index, records=records, busy_s=time.perf_counter() - started,
                        worker=f"{socket.gethostname()}:{os.getpid()}")


@task(name="ingest-shard", task_run_name="ingest-shard-{shard.index}", cache_policy=NO_CACHE)
def ingest_shard(shard: IngestShard, job: IngestJob) -> IngestResult:
    result = process_ingest_shard(shard, job)
    invalid = sum(r["status"] != "valid" for r in result.records)
    get_run_logger().info("shard %d: %d photos, %d invalid, %.1f s", shard.index, len(result.records), invalid,
                          result.busy_s)
    return result
