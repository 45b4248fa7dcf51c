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

Outside a Dask worker (tests calling ``process_shard`` directly) the reporter does nothing. Imports no torch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

TOPIC = "dpe.progress"
REPORT_EVERY_S = 0.5  # per shard: at 0.3 s a photo, about one event per 1-2 photos; bounded for fast GPU workers


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


class ShardProgress:
    """Throttled cumulative progress of one shard (``update`` after each photo, ``update(force=True)`` at its end).

    run: the run's key (the flow ignores other runs' events); send: where messages go (default: a Dask event on
    ``TOPIC`` from the current worker; None outside a worker)."""

    def __init__(self, run: str, shard: int, every_s: float = REPORT_EVERY_S,
                 send: Callable[[dict[str, Any]], None] | None = None, ok: str = "ok"):
        self.run, self.shard, self.every_s, self.ok = run, shard, every_s, ok
        if send is None and run:
            worker = _dask_worker()
            if worker is not None:
                def send(msg: dict[str, Any]) -> None:
                    worker.log_event(TOPIC, msg)
        self.send = send
        self._last = float("-inf")
        self.sent = 0

    def update(self, records: Sequence[dict[str, Any]], force: bool = False) -> None:
        """Report the shard's records so far when the last report is older than every_s (or force)."""
        if self.send is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        with contextlib.suppress(Exception):  # progress is reporting: never fail a photo over it
            self.send({"run": self.run, "shard": self.shard, **counts_of(records, self.ok)})
            self.sent += 1
