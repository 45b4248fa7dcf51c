"""The enhance shard task: many photos per Prefect task (each task run costs ~250 ms of Prefect overhead).

Per photo: read bytes (retried on storage errors) -> decode -> Enhancer (cached once per worker process) ->
encode in memory -> one atomic write -> a per-file record (ok / error with reason, timings). A photo that
fails never fails the shard; the shard's records are written to the destination as soon as it finishes
(and every ``checkpoint_every_s`` while it runs) so a killed run loses at most the shards in flight.
Reading/decoding the next photo and encoding/writing the previous one overlap the model's forward pass.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from tasks.common import dumps_jsonl, join, now_iso, use_storage_block, write_atomic
from tasks.manifest import WorkItem, format_for_output
from tasks.retry import with_storage_retries

Mode = Literal["full", "paper", "tiled"]


class EnhanceJob(BaseModel):
    """Settings shared by every shard of a run (small: it travels with each task)."""

    model_config = ConfigDict(frozen=True)

    model_uri: str
    model_id: str = ""
    device: str = "auto"
    mode: Mode = "full"
    dest_url: str
    records_url: str
    output_format: str = "same"
    quality: int = 95
    max_pixels: int | None = None
    torch_threads: int | None = None
    settings: str = ""
    storage_block: str | None = None
    prefetch: bool = True  # read ahead and write behind in threads, overlapping the model
    # Decode/encode in those threads too. Off when torch already uses every core of the worker: a decode
    # competing with torch's OpenMP threads stalls each parallel op (measured: slower than no overlap).
    overlap_cpu: bool = True
    io_threads: int = Field(2, ge=1, le=64, description="Threads reading/decoding and encoding/writing.")
    checkpoint_every_s: float = 30.0


class Shard(BaseModel):
    index: int
    items: list[dict[str, Any]]  # WorkItem.to_dict()
    previews: int = Field(0, ge=0, description="Before/after thumbnails to return (first ok files).")


class ShardResult(BaseModel):
    index: int
    records: list[dict[str, Any]]
    started: float
    finished: float
    busy_s: float  # inside the task: model wait + photo work
    model_wait_s: float
    worker: str
    previews: list[dict[str, str]] = Field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def _thumb(pixels, size: int = 192) -> str:
    """Small JPEG (base64) of HxWx3 uint8/uint16 pixels for a markdown preview."""
    import numpy as np
    from PIL import Image

    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = (array.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
    image = Image.fromarray(array[..., :3])
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def _output_format(item: WorkItem, job: EnhanceJob) -> str | None:
    """Format for encode_photo: the one the output's name implies (a renamed .mpo -> .jpg, a PNG named .jpg)."""
    return format_for_output(item.output) or (None if job.output_format == "same" else job.output_format.upper())


def _read(item: WorkItem, job: EnhanceJob) -> tuple[Any, dict[str, float]]:
    """Bytes of the input (retried on transient storage errors), decoded too when job.overlap_cpu."""
    from dpe_core.io.storage import read_bytes

    t0 = time.perf_counter()
    data = with_storage_retries(lambda: read_bytes(item.url), f"read {item.url}")
    timings = {"read": time.perf_counter() - t0}
    if not job.overlap_cpu:
        return data, timings
    return _decode(item, job, data, timings)


def _decode(item: WorkItem, job: EnhanceJob, data: bytes, timings: dict[str, float]) -> tuple[Any, dict[str, float]]:
    from dpe_core.io import decode_photo

    t0 = time.perf_counter()
    photo = decode_photo(data, item.rel, max_pixels=job.max_pixels)
    return photo, timings | {"decode": time.perf_counter() - t0}


def _encode(item: WorkItem, job: EnhanceJob, photo) -> tuple[bytes, dict[str, float]]:
    from dpe_core.io import encode_photo

    t0 = time.perf_counter()
    blob = encode_photo(photo, format=_output_format(item, job), quality=job.quality)
    return blob, {"encode": time.perf_counter() - t0}


def _write(item: WorkItem, job: EnhanceJob, blob: bytes, timings: dict[str, float]) -> tuple[int, str, dict]:
    """One atomic write of the finished bytes (retried on transient storage errors)."""
    from dpe_core.io.storage import write_bytes_atomic

    t0 = time.perf_counter()
    url = join(job.dest_url, item.output)
    with_storage_retries(lambda: write_bytes_atomic(url, blob), f"write {url}")
    return len(blob), hashlib.sha256(blob).hexdigest(), timings | {"write": time.perf_counter() - t0}


def _encode_write(item: WorkItem, job: EnhanceJob, photo) -> tuple[int, str, dict[str, float]]:
    blob, timings = _encode(item, job, photo)
    return _write(item, job, blob, timings)


def _error_reason(exc: BaseException) -> str:
    from dpe_core.io.errors import PhotoError

    if isinstance(exc, PhotoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def process_shard(shard: Shard, job: EnhanceJob, enhancer_factory: Callable[[], Any] | None = None,
                  log: Callable[[str], None] | None = None) -> ShardResult:
    """Enhance every photo of a shard; per-file records; never raises for a photo's failure.

    enhancer_factory: returns the Enhancer (default: the per-process cache). Plain function (tests call it
    without Prefect); ``enhance_shard`` is the Prefect task around it.
    """
    from tasks.models import get_enhancer

    use_storage_block(job.storage_block)
    started = time.time()
    t_start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    items = [WorkItem(**d) for d in shard.items]
    records: list[dict[str, Any]] = []
    previews: list[dict[str, str]] = []
    records_file = join(job.records_url, f"shard-{shard.index:05d}.jsonl")
    last_checkpoint = time.perf_counter()

    t0 = time.perf_counter()
    try:
        enhancer = (enhancer_factory or (lambda: get_enhancer(job.model_uri, job.device, job.torch_threads)))()
        model_error = None
    except Exception as exc:  # every file of the shard gets the reason
        enhancer, model_error = None, f"model {job.model_uri} could not be loaded: {_error_reason(exc)}"
    model_wait = time.perf_counter() - t0

    def base(item: WorkItem) -> dict[str, Any]:
        return {"input": item.rel, "output": item.output, "input_size": item.size, "input_version": item.version,
                "why": item.why, "shard": shard.index, "worker": worker, "model": job.model_id or job.model_uri,
                "mode": job.mode, "settings": job.settings}

    def finish(record: dict[str, Any], timings: dict[str, float], t_item: float) -> None:
        record["timings"] = {k: round(v, 4) for k, v in timings.items()}
        record["seconds"] = round(time.perf_counter() - t_item, 4)
        record["finished"] = now_iso()
        records.append(record)

    def checkpoint(force: bool = False) -> None:
        nonlocal last_checkpoint
        if records and (force or time.perf_counter() - last_checkpoint > job.checkpoint_every_s):
            with_storage_retries(lambda: write_atomic(records_file, dumps_jsonl(records)), f"write {records_file}")
            last_checkpoint = time.perf_counter()

    if model_error is not None:
        for item in items:
            finish(base(item) | {"status": "error", "reason": model_error}, {}, time.perf_counter())
        checkpoint(force=True)
        return ShardResult(index=shard.index, records=records, started=started, finished=time.time(),
                           busy_s=time.perf_counter() - t_start, model_wait_s=model_wait, worker=worker)

    depth = max(1, job.io_threads) if job.prefetch else 0  # photos read ahead, and encodes/writes in flight
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="dpe-io") if depth else None

    def submit(fn, *args) -> Future:
        if pool is not None:
            return pool.submit(fn, *args)
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    reads: deque[Future] = deque()
    writes: deque[tuple[dict[str, Any], dict[str, float], float, Future]] = deque()
    next_read = 0

    def top_up_reads() -> None:
        nonlocal next_read
        while next_read < len(items) and len(reads) < max(1, depth):
            reads.append(submit(_read, items[next_read], job))
            next_read += 1

    def collect_write() -> None:
        record, timings, t_item, future = writes.popleft()
        try:
            size, digest, t = future.result()
            timings |= t
            record |= {"status": "ok", "output_size": size, "output_sha256": digest}
        except Exception as exc:
            record |= {"status": "error", "reason": _error_reason(exc)}
        finish(record, timings, t_item)
        checkpoint()

    try:
        for item in items:
            top_up_reads()
            t_item = time.perf_counter()
            record = base(item)
            timings: dict[str, float] = {}
            try:
                photo, t = reads.popleft().result()
                top_up_reads()  # keep the readers busy while the model runs
                if not job.overlap_cpu:  # bytes were read ahead; decode here, not beside torch's threads
                    photo, t = _decode(item, job, photo, t)
                timings |= t
                record |= {"width": int(photo.pixels.shape[1]), "height": int(photo.pixels.shape[0])}
                t1 = time.perf_counter()
                enhanced = enhancer.enhance(photo, mode=job.mode)
                timings["enhance"] = time.perf_counter() - t1
            except Exception as exc:
                finish(record | {"status": "error", "reason": _error_reason(exc)}, timings, t_item)
                continue
            if len(previews) < shard.previews:
                try:
                    previews.append({"input": item.rel, "before": _thumb(photo.pixels),
                                     "after": _thumb(enhanced.pixels)})
                except Exception as exc:  # a preview is a nicety
                    if log:
                        log(f"preview of {item.rel} failed: {exc}")
            del photo
            if job.overlap_cpu:
                future = submit(_encode_write, item, job, enhanced)
            else:
                try:
                    blob, t = _encode(item, job, enhanced)
                except Exception as exc:
                    finish(record | {"status": "error", "reason": _error_reason(exc)}, timings, t_item)
                    continue
                future = submit(_write, item, job, blob, t)
            writes.append((record, timings, t_item, future))
            del enhanced
            while len(writes) > depth:
                collect_write()
        while writes:
            collect_write()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    checkpoint(force=True)
    return ShardResult(index=shard.index, records=records, started=started, finished=time.time(),
                       busy_s=time.perf_counter() - t_start, model_wait_s=model_wait, worker=worker, previews=previews)


@task(name="enhance-shard", task_run_name="enhance-shard-{shard.index}", cache_policy=NO_CACHE)
def enhance_shard(shard: Shard, job: EnhanceJob) -> ShardResult:
    """Prefect task: one shard on a Dask worker. Inference errors are per-file records, never task failures;
    storage I/O is retried per file inside (a task-level retry would redo finished photos)."""
    logger = get_run_logger()
    result = process_shard(shard, job, log=logger.warning)
    counts = result.counts
    logger.info("shard %d: %s in %.1f s on %s", shard.index, counts, result.busy_s, result.worker)
    return result
