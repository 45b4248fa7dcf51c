"""The enhance shard task: many photos per Prefect task (each task run costs ~250 ms of Prefect overhead).

Per photo: read bytes (retried on storage errors) -> decode -> Enhancer (cached once per worker process) ->
encode in memory -> one atomic write -> a per-file record (ok / error with reason, timings). A photo that
fails never fails the shard; the shard's records are written to the destination as soon as it finishes
(and every ``checkpoint_every_s`` while it runs) so a killed run loses at most the shards in flight.
Reading/decoding the next photo and encoding/writing the previous one overlap the model's forward pass.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from dpe_core.io.places import join
from tasks.jsonl import dumps_jsonl, now_iso, read_json, read_jsonl
from tasks.listing import read_input, source_place
from tasks.photo_pipeline import PhotoPipeline, nbytes
from tasks.plan import WorkItem, format_for_output
from tasks.progress import ShardProgress
from tasks.retry import with_storage_retries
from tasks.storage_options import use_storage_block
from tasks.writer import GuardedWriter, guarded_writer

Mode = Literal["full", "paper", "tiled"]


class EnhanceJob(BaseModel):
    """Settings shared by every shard of a run (small: it travels with each task)."""

    model_config = ConfigDict(frozen=True)

    model_uri: str
    model_id: str = ""
    device: str = "auto"
    mode: Mode = "full"
    strength: float = Field(1.0, ge=0, le=1, allow_inf_nan=False, description="0: the original, 1: full correction.")
    bf16: Literal["auto", "on", "off"] | None = None  # CPU bf16 of the net; None: the worker's $DPE_BF16, else auto
    dest_url: str
    records_url: str
    # The folder the inputs were listed from: inputs are read as (its filesystem, root + '/' + rel), never by
    # re-parsing a URL, and the guarded writer refuses any output that would land in it ("": derived per item).
    source_url: str = ""
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
    # Decode the next photo (in an I/O thread, so in the decoder process) while this one is encoded in the task's
    # thread, and only then: a worker whose torch uses every core never shares them with a decode, and decode
    # and encode (one core each) run side by side. Needs prefetch; encode stays in the task's thread.
    decode_ahead: bool = False

    @property
    def reads_decode(self) -> bool:
        """Whether a photo's reader (an I/O thread with prefetch) decodes it, not the task's thread."""
        return self.overlap_cpu or self.decode_ahead
    checkpoint_every_s: float = 30.0
    # Per-photo decode time limit: decode in a decoder process of the worker (tasks/decoder_process.py), killed
    # and replaced when it takes longer or crashes; the photo fails, the shard goes on. 0: decode in-process.
    decode_timeout_s: float = Field(120.0, ge=0)
    # Bytes of photos in flight per worker beside the one in the model (read ahead, written behind): PhotoPipeline.
    max_inflight_mb: int = Field(1024, ge=1)
    owner: str = ""  # the run's destination-lock owner id (tasks/lease.py): its temp files carry it
    dpe_version: str | None = None  # the flow's (tasks/versions.py): a worker running other code refuses the shard


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
    attempt: int = 1  # > 1: Dask ran this shard again after its worker died; it resumed from its records
    resumed: int = 0  # photos recorded by an earlier attempt, not redone
    peak_inflight_mb: float = 0.0  # most bytes of photos in flight at once (read ahead + in the model + behind)
    first_output: float | None = None  # time.time() when this shard's first enhanced photo was recorded
    precision: str | None = None  # the net's precision on this worker: fp32, bf16 or fp16 (None: no model)

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
    """Bytes of the input (retried on transient storage errors), decoded too when job.overlap_cpu.

    The stored size is checked first: a file over the input limit (DPE_MAX_INPUT_BYTES, dpe_core.io.limits) is
    a per-file InputTooLargeError naming its size, never read; a local device or pipe is refused unread."""
    from dpe_core.io.limits import DEFAULT_LIMITS

    t0 = time.perf_counter()
    source = source_place(job.source_url, item.rel, item.url)
    data = with_storage_retries(lambda: read_input(source, item.rel, max_bytes=DEFAULT_LIMITS.max_input_bytes),
                                f"read {item.url}")
    timings = {"read": time.perf_counter() - t0}
    if not job.reads_decode:
        return data, timings
    return _decode(item, job, data, timings)


def _photo_decoder(job: EnhanceJob) -> Callable[..., Any]:
    """decode_photo, or the same call in a decoder process with the job's time limit (decode_timeout_s > 0)."""
    from tasks.decoder_process import decode_isolated, load_decoder

    if job.decode_timeout_s:
        return functools.partial(decode_isolated, timeout_s=job.decode_timeout_s)
    return load_decoder()


def _decode(item: WorkItem, job: EnhanceJob, data: bytes, timings: dict[str, float]) -> tuple[Any, dict[str, float]]:
    t0 = time.perf_counter()
    photo = _photo_decoder(job)(data, item.rel, max_pixels=job.max_pixels)
    return photo, timings | {"decode": time.perf_counter() - t0}


def _encode(item: WorkItem, job: EnhanceJob, photo) -> tuple[bytes, dict[str, float]]:
    from dpe_core.io import encode_photo

    t0 = time.perf_counter()
    blob = encode_photo(photo, format=_output_format(item, job), quality=job.quality)
    return blob, {"encode": time.perf_counter() - t0}


def _writer(job: EnhanceJob) -> GuardedWriter:
    """The destination's guarded writer (one per worker process and run): every write of a shard goes through it."""
    return guarded_writer(job.dest_url, job.source_url or None, getattr(job, "owner", ""))


def _write(item: WorkItem, job: EnhanceJob, blob: bytes, timings: dict[str, float]) -> tuple[int, str, dict]:
    """One atomic write of the finished bytes through the guarded writer (retried on transient storage errors;
    a refusal -- a link in the destination, a target in the source, the input itself -- is not retried)."""
    t0 = time.perf_counter()
    source = source_place(job.source_url, item.rel, item.url)
    writer = _writer(job)
    with_storage_retries(lambda: writer.write(item.output, blob, input_rel=item.rel, source=source),
                         f"write {writer.location(item.output)}")
    return len(blob), hashlib.sha256(blob).hexdigest(), timings | {"write": time.perf_counter() - t0}


def _encode_write(item: WorkItem, job: EnhanceJob, photo) -> tuple[int, str, dict[str, float]]:
    blob, timings = _encode(item, job, photo)
    return _write(item, job, blob, timings)


_NO_DETAIL = {MemoryError: "out of memory while processing this photo", RecursionError: "recursion too deep"}


def _error_reason(exc: BaseException) -> str:
    """A per-file reason: never empty (MemoryError() has no text), never a credential (dpe_core.io.redact)."""
    from dpe_core.io.errors import PhotoError
    from dpe_core.io.redact import redact

    if isinstance(exc, PhotoError):
        return str(exc)
    detail = str(exc).strip() or next((text for kind, text in _NO_DETAIL.items() if isinstance(exc, kind)),
                                      "no detail given")
    return redact(f"{type(exc).__name__}: {detail}")


def net_precision(enhancer: Any) -> str | None:
    """'bf16', 'fp16' or 'fp32': how the Enhancer runs its net now (CPU bf16 'auto' decides on the first images)."""
    if enhancer is None:
        return None
    dtype = getattr(enhancer, "amp_dtype", None)
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), "fp32")


def _load_enhancer(job: EnhanceJob, enhancer_factory: Callable[[], Any] | None) -> tuple[Any, str | None, float]:
    """(enhancer or None, the reason every photo fails when it could not be loaded, seconds waited)."""
    from tasks.models import get_enhancer

    t0 = time.perf_counter()
    try:
        load = enhancer_factory or (lambda: get_enhancer(job.model_uri, job.device, job.torch_threads, job.bf16))
        enhancer = load()
        return enhancer, None, time.perf_counter() - t0
    except Exception as exc:  # every file of the shard gets the reason
        return None, f"model {job.model_uri} could not be loaded: {_error_reason(exc)}", time.perf_counter() - t0


class ShardLedger:
    """The shard's per-file records and their checkpoint ``<records_url>/shard-NNNNN.jsonl``.

    Checkpointed every ``job.checkpoint_every_s`` and when the shard ends, so a dead worker loses at most that
    much work. Dask runs the shard of a dead worker again (up to 3 deaths, then KilledWorker): that attempt
    starts from the records the earlier ones checkpointed (``resume``) instead of redoing their photos. An
    attempt marker ``shard-NNNNN.attempt.json`` counts attempts; from the second attempt on the ledger is
    careful: it names the photo in hand in the marker before each photo and checkpoints after each one, so
    that when the worker dies again the next attempt knows which photo killed it and records that photo as
    failed instead of dying on it a third time.
    """

    def __init__(self, shard: Shard, job: EnhanceJob, worker: str, progress: ShardProgress | None = None):
        self.shard, self.job, self.worker = shard, job, worker
        self.progress = progress  # per-photo progress to the flow (tasks/progress.py), throttled there
        self.url = join(job.records_url, f"shard-{shard.index:05d}.jsonl")
        self.marker_url = join(job.records_url, f"shard-{shard.index:05d}.attempt.json")
        self.records: list[dict[str, Any]] = []
        self.attempt = 1
        self.resumed = 0
        self._last_checkpoint = time.perf_counter()
        self._marker: dict[str, Any] = {}
        self.first_output: float | None = None

    @property
    def careful(self) -> bool:
        return self.attempt > 1

    def base(self, item: WorkItem) -> dict[str, Any]:
        job = self.job
        return {"input": item.rel, "output": item.output, "input_size": item.size, "input_version": item.version,
                "why": item.why, "shard": self.shard.index, "worker": self.worker,
                "model": job.model_id or job.model_uri, "mode": job.mode, "settings": job.settings}

    def finish(self, record: dict[str, Any], timings: dict[str, float], t_item: float) -> None:
        record["timings"] = {k: round(v, 4) for k, v in timings.items()}
        record["seconds"] = round(time.perf_counter() - t_item, 4)
        record["finished"] = now_iso()
        if self.first_output is None and record.get("status") == "ok":
            self.first_output = time.time()
        self.records.append(record)
        self.checkpoint(force=self.careful)
        if self.progress is not None:
            self.progress.update(self.records)

    def fail(self, item: WorkItem, reason: str) -> None:
        self.finish(self.base(item) | {"status": "error", "reason": reason}, {}, time.perf_counter())

    def checkpoint(self, force: bool = False) -> None:
        if self.records and (force or time.perf_counter() - self._last_checkpoint > self.job.checkpoint_every_s):
            data = dumps_jsonl(self.records)
            with_storage_retries(lambda: _writer(self.job).write_url(self.url, data), f"write {self.url}")
            self._last_checkpoint = time.perf_counter()

    def working_on(self, item: WorkItem | None) -> None:
        """Careful attempts: name the photo in hand before it is touched (see the class docstring)."""
        if self.careful:
            self._marker["current"] = item.rel if item is not None else None
            self._write_marker()

    def _write_marker(self) -> None:
        data = json.dumps(self._marker, sort_keys=True).encode()
        with_storage_retries(lambda: _writer(self.job).write_url(self.marker_url, data),
                             f"write {self.marker_url}")

    def resume(self, items: list[WorkItem]) -> list[WorkItem]:
        """The items still to do: those an earlier attempt of this shard did not record. Their records are
        kept; the photo a careful earlier attempt died on is recorded as failed."""
        try:
            marker = read_json(self.marker_url) or {}
            earlier = {r["input"]: r for r in read_jsonl(self.url) if "input" in r} if marker else {}
        except Exception:  # unreadable bookkeeping: do the whole shard
            marker, earlier = {}, {}
        self.attempt = int(marker.get("attempt", 0)) + 1
        self._marker = {"attempt": self.attempt, "worker": self.worker, "started": now_iso(), "current": None}
        self._write_marker()
        todo = []
        for item in items:
            if item.rel in earlier:
                self.records.append(earlier[item.rel])
                self.resumed += 1
            elif item.rel == marker.get("current"):
                self.fail(item, f"{item.rel}: the worker process died while processing this photo (attempt "
                                f"{self.attempt - 1} of shard {self.shard.index}; worker {marker.get('worker')})")
            else:
                todo.append(item)
        if self.resumed:
            self.checkpoint(force=True)
        return todo


def process_shard(shard: Shard, job: EnhanceJob, enhancer_factory: Callable[[], Any] | None = None,
                  log: Callable[[str], None] | None = None) -> ShardResult:
    """Enhance every photo of a shard; per-file records; never raises for a photo's failure.

    enhancer_factory: returns the Enhancer (default: the per-process cache). Plain function (tests call it
    without Prefect); ``enhance_shard`` is the Prefect task around it. Parts: ``ShardLedger`` (records,
    checkpoints, resuming a shard whose worker died), ``PhotoPipeline`` (read-ahead/write-behind within a byte
    budget), ``_enhance_one`` (one photo through the model), ``_decode`` (in a decoder process with a time
    limit unless ``job.decode_timeout_s`` is 0).
    """
    use_storage_block(job.storage_block)
    started = time.time()
    t_start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    ledger = ShardLedger(shard, job, worker, ShardProgress(job.records_url, shard.index))
    previews: list[dict[str, str]] = []
    enhancer, model_error, model_wait = _load_enhancer(job, enhancer_factory)
    items = ledger.resume([WorkItem(**d) for d in shard.items])
    peak = 0

    if model_error is not None:
        for item in items:
            ledger.fail(item, model_error)
    else:
        def record_write(record: dict[str, Any], timings: dict[str, float], t_item: float, future: Future) -> None:
            _record_write(ledger, record, timings, t_item, future)

        with PhotoPipeline(job, items, _read, record_write, sequential=ledger.careful) as pipeline:
            for done in range(1, len(items) + 1):
                _enhance_one(pipeline, ledger, enhancer, job, shard, previews, log)
                if done % TRIM_EVERY == 0:
                    release_free_memory()
            pipeline.drain()
            peak = pipeline.peak
    ledger.working_on(None)
    ledger.checkpoint(force=True)
    if ledger.progress is not None:
        ledger.progress.update(ledger.records, force=True)
    release_free_memory()
    return ShardResult(index=shard.index, records=ledger.records, started=started, finished=time.time(),
                       busy_s=time.perf_counter() - t_start, model_wait_s=model_wait, worker=worker,
                       previews=previews, attempt=ledger.attempt, resumed=ledger.resumed,
                       peak_inflight_mb=round(peak / 2**20, 1), first_output=ledger.first_output,
                       precision=net_precision(enhancer))


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc malloc_trim; elsewhere nothing): every TRIM_EVERY
    photos and when a shard ends. A trim costs ~2 ms.

    Workers run without distributed's MALLOC_TRIM_THRESHOLD_=65536, which made torch 1.6x slower (docs/flows.md):
    glibc then keeps what photos of ever-changing sizes leave free, and a worker's RSS crept up over thousands of
    photos (measured in one process, shards of 250 small photos, from the 1st to the 8th shard: +16 % without,
    +3 % with this call after each shard, same speed).
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018  (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None
TRIM_EVERY = 32  # photos between two malloc_trim calls inside a shard (and one at its end)


def _enhance_one(pipeline: PhotoPipeline, ledger: ShardLedger, enhancer, job: EnhanceJob, shard: Shard,
                 previews: list[dict[str, str]], log: Callable[[str], None] | None) -> None:
    """The next photo of the pipeline: decoded (unless its reader did), enhanced, handed to encode/write."""
    item = pipeline.peek()
    ledger.working_on(item)
    t_item = time.perf_counter()
    record = ledger.base(item)
    timings: dict[str, float] = {}
    try:
        item, photo, t = pipeline.next_photo()
        if not job.reads_decode:  # bytes were read ahead; decode here, not beside torch's threads
            photo, t = _decode(item, job, photo, t)
            pipeline.hold(photo, item)
        timings |= t
        record |= {"width": int(photo.pixels.shape[1]), "height": int(photo.pixels.shape[0])}
        t1 = time.perf_counter()
        # strength only when not 1: the default call stays the one every Enhancer-like object accepts
        extra = {"strength": job.strength} if job.strength != 1.0 else {}
        enhanced = enhancer.enhance(photo, mode=job.mode, **extra)
        timings["enhance"] = time.perf_counter() - t1
    except Exception as exc:
        pipeline.release()
        pipeline.after_model()
        ledger.finish(record | {"status": "error", "reason": _error_reason(exc)}, timings, t_item)
        return
    if len(previews) < shard.previews:
        try:
            previews.append({"input": item.rel, "before": _thumb(photo.pixels), "after": _thumb(enhanced.pixels)})
        except Exception as exc:  # a preview is a nicety
            if log:
                log(f"preview of {item.rel} failed: {exc}")
    del photo
    pipeline.release()
    pipeline.after_model()
    if job.overlap_cpu:
        future = pipeline.submit(_encode_write, item, job, enhanced)
        charge = nbytes(enhanced)
    else:
        try:
            blob, t = _encode(item, job, enhanced)
        except Exception as exc:
            ledger.finish(record | {"status": "error", "reason": _error_reason(exc)}, timings, t_item)
            return
        future = pipeline.submit(_write, item, job, blob, t)
        charge = len(blob)
    del enhanced
    pipeline.write_behind(record, timings, t_item, future, charge)


def _record_write(ledger: ShardLedger, record: dict[str, Any], timings: dict[str, float], t_item: float,
                  future: Future) -> None:
    try:
        size, digest, t = future.result()
        timings |= t
        record |= {"status": "ok", "output_size": size, "output_sha256": digest}
    except Exception as exc:
        record |= {"status": "error", "reason": _error_reason(exc)}
    ledger.finish(record, timings, t_item)


@task(name="enhance-shard", task_run_name="enhance-shard-{shard.index}", cache_policy=NO_CACHE)
def enhance_shard(shard: Shard, job: EnhanceJob) -> ShardResult:
    """Prefect task: one shard on a Dask worker. Inference errors are per-file records, never task failures;
    storage I/O is retried per file inside (a task-level retry would redo finished photos)."""
    from tasks.versions import require_version

    require_version(job.dpe_version)  # before any work: a worker that joined after the flow's check
    logger = get_run_logger()
    result = process_shard(shard, job, log=logger.warning)
    counts = result.counts
    logger.info("shard %d: %d ok, %d failed in %.1f s on %s", shard.index, counts.get("ok", 0),
                counts.get("error", 0), result.busy_s, result.worker)
    return result
