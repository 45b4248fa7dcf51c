"""Read-ahead and write-behind around the model for one shard (tasks/enhance.py's process_shard), within a photo
count and a byte budget."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tasks.plan import WorkItem


class PhotoPipeline:
    """Read-ahead and write-behind around the model, within a photo count and a byte budget.

    At most ``depth`` photos are read ahead and ``depth`` written behind (``job.io_threads``; 0 without
    ``job.prefetch``), and a photo is read ahead only while the bytes in flight (compressed bytes read ahead,
    decoded pixels waiting for the model or for encoding, encoded bytes waiting to be written) stay within
    ``job.max_inflight_mb``. A decoded photo counts its pixels from the moment its decode ends; a read still
    running counts its file size times the largest decoded/compressed ratio seen in this shard, and nothing is
    read ahead before the first photo has shown a ratio. The photo the model needs next is always read (after
    writes behind have drained to the budget): a worker's memory for photos is the budget, or one photo when a
    single photo is larger, whatever ``io_threads`` is (plus the decoders' and encoders' own scratch memory).
    """

    def __init__(self, job: Any, items: list[WorkItem], read: Callable[[WorkItem, Any], tuple[Any, dict]],
                 on_write_done: Callable[..., None], sequential: bool = False):
        self.job = job  # an EnhanceJob: prefetch, reads_decode, decode_ahead, io_threads, max_inflight_mb
        self.read = read  # (item, job) -> (bytes, or a decoded photo when reads decode, timings)
        self.items = items
        self.on_write_done = on_write_done  # (record, timings, t_item, future) of a finished encode/write
        # sequential: nothing read ahead or written behind (a careful attempt must know the photo in hand)
        self.depth = max(1, job.io_threads) if job.prefetch and not sequential else 0
        self.budget = job.max_inflight_mb * 2**20
        self.pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="dpe-io") if self.depth else None
        # decode_ahead: the next photo is read and decoded once the model is done with this one (after_model)
        self.reads_beside_model = not (job.decode_ahead and self.depth)
        self.reads: deque[tuple[WorkItem, Future, int]] = deque()  # (item, future, bytes charged)
        self.writes: deque[tuple[dict[str, Any], dict[str, float], float, Future, int]] = deque()
        self.next_read = 0
        self.current = 0  # bytes of the photo in the model
        self.peak = 0
        self._ratios: list[float] = []

    def __enter__(self) -> PhotoPipeline:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def inflight(self) -> int:
        reads = 0
        for _item, future, charge in self.reads:
            if future.done() and future.exception() is None:
                charge = nbytes(future.result()[0])  # decoded (or read) already: its real size
            reads += charge
        return self.current + reads + sum(w[4] for w in self.writes)

    def _note(self) -> None:
        self.peak = max(self.peak, self.inflight())

    def _estimate(self, item: WorkItem) -> int:
        if not self.job.reads_decode:  # read ahead as bytes; decoded in the model's thread
            return item.size
        return int(item.size * max([1.0, *self._ratios]))

    def _fits(self, item: WorkItem) -> bool:
        """Can item be read ahead within the budget? Not before a decode has shown what a file decodes to."""
        if self.job.reads_decode and not self._ratios:
            return False
        return self.inflight() + self._estimate(item) <= self.budget

    def _submit_read(self) -> None:
        item = self.items[self.next_read]
        self.reads.append((item, self.submit(self.read, item, self.job), self._estimate(item)))
        self.next_read += 1
        self._note()

    def top_up_reads(self, model_waits: bool = False) -> None:
        """Read ahead while within the count and the byte budget. model_waits: the model needs the next photo
        now, so it is read even over budget, once the writes behind have drained to the budget."""
        ahead = 1 if self.job.decode_ahead else max(1, self.depth)  # one decode at a time beside the encode
        while self.next_read < len(self.items) and len(self.reads) < ahead:
            item = self.items[self.next_read]
            if model_waits and not self.reads:
                while self.writes and self.inflight() + self._estimate(item) > self.budget:
                    self.collect_write()
            elif not self._fits(item):
                return
            self._submit_read()

    def peek(self) -> WorkItem:
        """The item next_photo() returns next."""
        return self.reads[0][0] if self.reads else self.items[self.next_read]

    def next_photo(self) -> tuple[WorkItem, Any, dict[str, float]]:
        """The next item and its read result (bytes, or a decoded photo with overlap_cpu); raises its error."""
        self.top_up_reads(model_waits=True)
        item, future, _charge = self.reads.popleft()
        try:
            loaded, timings = future.result()
        except BaseException:
            self.top_up_reads()
            raise
        self.hold(loaded, item)
        if self.reads_beside_model:
            self.top_up_reads()  # keep the readers busy while the model runs
        return item, loaded, timings

    def after_model(self) -> None:
        """The model is done with the current photo: with decode_ahead, the next ones are read and decoded now,
        beside this photo's encode."""
        if not self.reads_beside_model:
            self.top_up_reads()

    def hold(self, loaded: Any, item: WorkItem) -> None:
        """The photo (or its bytes) now in the model's hands."""
        size = nbytes(loaded)
        if not isinstance(loaded, bytes | bytearray | memoryview) and item.size:
            self._ratios.append(size / item.size)
        self.current = size
        self._note()

    def release(self) -> None:
        self.current = 0

    def write_behind(self, record: dict[str, Any], timings: dict[str, float], t_item: float, future: Future,
                     charge: int) -> None:
        self.writes.append((record, timings, t_item, future, charge))
        self._note()
        while len(self.writes) > self.depth or (self.writes and self.inflight() > self.budget):
            self.collect_write()

    def collect_write(self) -> None:
        """Wait for the oldest encode/write behind and record it."""
        record, timings, t_item, future, _charge = self.writes.popleft()
        self.on_write_done(record, timings, t_item, future)

    def drain(self) -> None:
        while self.writes:
            self.collect_write()


def nbytes(loaded: Any) -> int:
    """Bytes held by a read result: the file's bytes, or a decoded photo's pixels (and alpha)."""
    if isinstance(loaded, bytes | bytearray | memoryview):
        return len(loaded)
    total = 0
    for name in ("pixels", "alpha"):
        array = getattr(loaded, name, None)
        total += int(getattr(array, "nbytes", 0) or 0)
    return total
