"""Per-photo progress from the Dask workers to the flow that follows the run, while shards are still running.

A shard holds hundreds of photos; a run that only counted finished shards showed nothing for minutes, then jumped.
Each shard task therefore reports how many of its photos are done, at most every ``REPORT_EVERY_S`` and when it
ends, as a Dask event on the topic ``TOPIC`` (``Worker.log_event``). Why an event:

* it rides the worker's existing batched stream to the scheduler: no extra connection, no round trip, nothing the
  photo loop waits for (a distributed Queue or Variable is a scheduler RPC per update, and a counter polled by the
  flow would need a handle per task);
* the scheduler forwards it at once to the clients subscribed to the topic (the flow's management client:
  ``flows/progress.py``); events of a topic are kept in a ring of ``distributed.admin.low-level-log-length``
  (1,000) entries, so one fixed topic name costs a long-lived scheduler bounded memory whatever the number of runs;
* a lost or repeated event changes nothing: every message carries the shard's cumulative counts, the flow keeps the
  largest per shard and replaces it with the shard's own records when the task returns.

A training task reports the same way (``Reporter``, tasks/train.py): its iteration, the latest losses and scores,
at most every ``TRAIN_REPORT_EVERY_S``; ``flows/progress.py::TrainingProgress`` follows it.

Outside a Dask worker (tests calling ``process_shard`` directly) the reporter does nothing. Imports no torch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

TOPIC = "dpe.progress"
REPORT_EVERY_S = 0.5  # per shard: at 0.3 s a photo, about one event per 1-2 photos; bounded for fast GPU workers
TRAIN_REPORT_EVERY_S = 1.0  # a training run: one event a second whatever the iteration rate


def _dask_worker() -> Any | None:
    """The Dask worker this code runs on, else None."""
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - dask is part of the install
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def counts_of(records: Sequence[dict[str, Any]], ok: str = "ok") -> dict[str, int]:
    """{"done", "ok", "error", "bytes"} of per-file records (``ok``: the status that counts as success; bytes: the
    inputs' sizes, the work measure the shards were balanced by)."""
    good = sum(r.get("status") == ok for r in records)
    failed = sum(r.get("status") in ("error", "invalid") for r in records)
    size = sum(int(r.get("input_size") or r.get("bytes") or 0) for r in records)
    return {"done": len(records), "ok": good, "error": failed, "bytes": size}


class Reporter:
    """Throttled messages on ``TOPIC``: ``report(msg)`` sends ``{"run": run} | msg`` when the last one is older
    than every_s (or force). send: where messages go (default: a Dask event from the current worker; None outside
    a worker, and then nothing is sent). A failing send is ignored: progress is reporting only."""

    def __init__(self, run: str, every_s: float, send: Callable[[dict[str, Any]], None] | None = None):
        self.run, self.every_s = run, every_s
        if send is None and run:
            worker = _dask_worker()
            if worker is not None:
                def send(msg: dict[str, Any]) -> None:
                    worker.log_event(TOPIC, msg)
        self.send = send
        self._last = float("-inf")
        self.sent = 0

    def due(self, force: bool = False) -> bool:
        """Whether a report now would be sent (a sender exists and every_s have passed, or force)."""
        return self.send is not None and (force or time.monotonic() - self._last >= self.every_s)

    def report(self, msg: dict[str, Any], force: bool = False) -> None:
        """Send msg (tagged with the run's key) when due."""
        if not self.due(force):
            return
        self._last = time.monotonic()
        with contextlib.suppress(Exception):
            self.send({"run": self.run} | msg)
            self.sent += 1


class ShardProgress(Reporter):
    """Throttled cumulative progress of one shard (``update`` after each photo, ``update(force=True)`` at its end).

    run: the run's key (the flow ignores other runs' events); send: where messages go (default: a Dask event on
    ``TOPIC`` from the current worker; None outside a worker)."""

    def __init__(self, run: str, shard: int, every_s: float = REPORT_EVERY_S,
                 send: Callable[[dict[str, Any]], None] | None = None, ok: str = "ok"):
        super().__init__(run, every_s, send)
        self.shard, self.ok = shard, ok

    def update(self, records: Sequence[dict[str, Any]], force: bool = False) -> None:
        """Report the shard's records so far when the last report is older than every_s (or force)."""
        if self.due(force):  # counting the records costs a pass over them: only when a report goes out
            self.report({"shard": self.shard, **counts_of(records, self.ok)}, force=True)
