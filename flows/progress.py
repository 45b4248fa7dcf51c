"""A run's progress as the people following it see it: per photo, with a steady rate and time left.

The Dask workers report each shard's finished photos as events (``tasks/progress.py``); ``RunProgress`` subscribes
to them through the flow's management client, sums them per shard and, every ``TICK_S`` on a thread of its own,
hands a snapshot to the in-process listeners (the CLI's bar or its log lines), updates the Prefect progress
artifact (at most every ``ARTIFACT_EVERY_S``) and logs one line every ``progress_every_s()`` seconds (the run's
logs in the UI, a worker's log, cron mail): ``12/46 photos (26%), 0 failed, 2.31 photos/s, about 15 s left``.

Rate and time left come from what was finished in the last ``RATE_WINDOW_S`` seconds, counted from the first
photo's report (model loading and photos skipped as already done do not skew them). Time left is measured in the
work the shards were balanced by (input bytes plus a fixed cost per photo) when the flow gives its total: shards
run their costliest photos first, so a count of photos alone would promise too much time early and too little late.

Also here: the in-process listener registry (``LISTENERS``, ``emit``) and ``announce_run``, which tells listeners
the run's UI address as soon as the flow starts. Imports no torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tasks.progress import TOPIC

# In-process listeners (the CLI): called with small event dicts; never part of a flow's parameters.
LISTENERS: list[Callable[[dict[str, Any]], None]] = []

TICK_S = 0.5
ARTIFACT_EVERY_S = 2.0
RATE_WINDOW_S = 60.0
DEFAULT_PROGRESS_EVERY_S = 30.0


def emit(event: dict[str, Any]) -> None:
    """Hand an event to every in-process listener (a failing listener is ignored)."""
    for listener in list(LISTENERS):
        with contextlib.suppress(Exception):
            listener(event)


def progress_every_s() -> float:
    """Seconds between two progress log lines: $DPE_PROGRESS_EVERY_S, default 30."""
    try:
        value = float(os.environ.get("DPE_PROGRESS_EVERY_S", DEFAULT_PROGRESS_EVERY_S))
    except ValueError:
        return DEFAULT_PROGRESS_EVERY_S
    return value if value > 0 else DEFAULT_PROGRESS_EVERY_S


def run_ui_url(flow_run_id: Any) -> str | None:
    """The Prefect UI page of a flow run (PREFECT_UI_URL, else derived from the API URL), None without an API."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    ui = settings.ui_url or (settings.api.url.removesuffix("/").removesuffix("/api") if settings.api.url else None)
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def announce_run(job: str) -> None:
    """Tell listeners which flow run this is and where the UI shows it (event "started")."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    emit({"event": "started", "job": job, "flow_run_id": str(ctx.flow_run.id), "name": ctx.flow_run.name,
          "url": run_ui_url(ctx.flow_run.id)})


def duration(seconds: float | None) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min' ('n/a' for None)."""
    if seconds is None:
        return "n/a"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def describe(snapshot: dict[str, Any], unit: str = "photos") -> str:
    """One line for a person: done/total (percent), failed, rate, time left."""
    total, done = snapshot["total"], snapshot["done"]
    percent = 100.0 * done / total if total else 100.0
    rate = snapshot.get("rate")
    left = snapshot.get("eta_s")
    return (f"{done}/{total} {unit} ({percent:.0f}%), {snapshot['failed']} failed, "
            f"{f'{rate:.2f}' if rate else 'n/a'} {unit}/s, "
            + ("about " + duration(left) + " left" if left is not None else "time left n/a"))


class RateEstimate:
    """Items per second over the last window seconds, counted from the first reported item."""

    def __init__(self, window_s: float = RATE_WINDOW_S, min_span_s: float = 5.0):
        self.window_s, self.min_span_s = window_s, min_span_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, n: int) -> None:
        """Record that n items were done by time t (n never decreases)."""
        if self.samples and n <= self.samples[-1][1]:
            return
        self.samples.append((t, n))
        # keep one sample at or before the window's start as the anchor
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window_s:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        """None until min_span_s have passed since the first report (a first burst is not a rate)."""
        if len(self.samples) < 2:
            return None
        t0, n0 = self.samples[0]
        _, n1 = self.samples[-1]
        return (n1 - n0) / (now - t0) if now - t0 >= self.min_span_s and n1 > n0 else None

    def settled(self, now: float) -> float | None:
        """The rate over all the samples kept, however short the span: for the last line of a finished run,
        which would otherwise read 'n/a' whenever the run took less than min_span_s."""
        if len(self.samples) < 2 or now <= self.samples[0][0]:
            return self.rate(now)
        (t0, n0), (_, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (now - t0) if n1 > n0 else None


class Follower:
    """The lifetime both followers share: subscribe to the workers' events (``on_event``), call ``tick`` every
    tick_s on a thread of its own (in the flow run's Prefect context), and a final ``tick(final=True)`` at exit."""

    client: Any = None
    tick_s: float = TICK_S

    def on_event(self, event: Any) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def tick(self, final: bool = False) -> dict[str, Any]:  # pragma: no cover - subclasses
        raise NotImplementedError

    def __enter__(self):
        self._stop = threading.Event()
        if self.client is not None:
            with contextlib.suppress(Exception):  # no events: progress still moves when tasks finish
                self.client.subscribe_topic(TOPIC, self.on_event)
        context = contextvars.copy_context()  # the flow run's Prefect context (logger, API settings)
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="dpe-progress", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            with contextlib.suppress(Exception):
                self.tick()

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(TOPIC)
        with contextlib.suppress(Exception):
            self.tick(final=True)


class RunProgress(Follower):
    """Progress of one run from its workers' per-photo events: a context manager around the shard phase.

    run: the key the workers' events carry (the shards' ``ShardProgress(run=...)``); total: items of the run;
    already: items done before this phase (skipped as done); artifact: an ``flows.artifacts.Progress`` or None;
    client: the distributed Client to subscribe with (None: only finished shards count); log: a logger's info;
    work_total / item_cost: the phase's work as input bytes + item_cost per item (time left is estimated from the
    rate of work when given, else from the rate of items)."""

    def __init__(self, run: str, total: int, already: int, *, client: Any = None, artifact: Any = None,
                 log: Callable[..., None] | None = None, unit: str = "photos", job: str = "enhance",
                 log_every_s: float | None = None, tick_s: float = TICK_S, work_total: int | None = None,
                 item_cost: int = 0, clock: Callable[[], float] = time.monotonic):
        self.run, self.total, self.already, self.unit, self.job = run, total, already, unit, job
        self.work_total, self.item_cost, self.clock = work_total, item_cost, clock
        self._work_rate = RateEstimate()
        self.client, self.artifact, self.log = client, artifact, log
        self.log_every_s = log_every_s if log_every_s is not None else progress_every_s()
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._live: dict[int, dict[str, int]] = {}
        self._final: dict[int, dict[str, int]] = {}
        self._rate = RateEstimate()
        self._last_emitted: tuple | None = None
        self._last_artifact = float("-inf")
        self._last_log = time.monotonic()
        self.started = time.monotonic()
        self.events = 0  # workers' events taken (for tests and the curious)

    # -------------------------------------------------------------------------------------------- inputs

    def on_event(self, event: Any) -> None:
        """A Dask event ``(timestamp, msg)`` from tasks.progress (other runs' events are ignored)."""
        msg = event[1] if isinstance(event, tuple | list) and len(event) == 2 else event
        if not isinstance(msg, dict) or msg.get("run") != self.run:
            return
        try:
            shard, counts = int(msg["shard"]), {k: int(msg[k]) for k in ("done", "ok", "error")}
            counts["bytes"] = int(msg.get("bytes") or 0)
        except (KeyError, TypeError, ValueError):
            return
        with self._lock:
            self.events += 1
            if shard in self._final:
                return
            previous = self._live.get(shard)
            if previous is None or counts["done"] >= previous["done"]:
                self._live[shard] = counts

    def shard_done(self, shard: int, records: list[dict[str, Any]], ok: str = "ok") -> None:
        """A shard's task returned (or was given up): its records replace whatever its events said."""
        from tasks.progress import counts_of

        with self._lock:
            self._final[shard] = counts_of(records, ok)
            self._live.pop(shard, None)

    # -------------------------------------------------------------------------------------------- outputs

    def snapshot(self) -> dict[str, Any]:
        """{"done", "total", "ok", "failed", "rate", "eta_s", "elapsed_s"} now."""
        now = self.clock()
        with self._lock:
            parts = list(self._final.values()) + list(self._live.values())
            done_here = sum(p["done"] for p in parts)
            work = sum(p.get("bytes", 0) for p in parts) + self.item_cost * done_here
            if done_here:
                self._rate.add(now, done_here)
                self._work_rate.add(now, work)
            left = self.total - self.already - done_here
            rate = self._rate.rate(now) if left > 0 else self._rate.settled(now)
            work_rate = self._work_rate.rate(now)
        if left <= 0:
            eta = 0.0
        elif self.work_total is not None:
            eta = max(0, self.work_total - work) / work_rate if work_rate and rate else None
        else:
            eta = left / rate if rate else None
        return {"done": self.already + done_here, "total": self.total, "ok": sum(p["ok"] for p in parts),
                "failed": sum(p["error"] for p in parts), "rate": round(rate, 3) if rate else None,
                "eta_s": round(eta, 1) if eta is not None else None, "elapsed_s": round(now - self.started, 1)}

    def tick(self, final: bool = False) -> dict[str, Any]:
        """Emit the snapshot when it changed; the artifact and the log line when they are due."""
        snap = self.snapshot()
        key = (snap["done"], snap["failed"], snap["eta_s"] is None)
        now = time.monotonic()
        if key != self._last_emitted or final:
            self._last_emitted = key
            emit({"event": "progress", "job": self.job, "unit": self.unit, "final": final} | snap)
        if self.artifact is not None and (final or now - self._last_artifact >= ARTIFACT_EVERY_S):
            self._last_artifact = now
            self.artifact.update(snap["done"] / self.total if self.total else 1.0, describe(snap, self.unit))
        if self.log is not None and not final and now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.log("progress: %s", describe(snap, self.unit))
        return snap



# ------------------------------------------------------------------------------------------------- training

TRAIN_RATE_WINDOW_S = 300.0  # iterations of a GAN run vary (generator steps every N-th, evaluations): a long window


def describe_training(snapshot: dict[str, Any]) -> str:
    """One line for a person following a training run:
    'iteration 120/5000 (2.4%) | G loss 0.123 | critic loss -1.2 | lambda_Y 10 | 0.43 s/it, about 35 min 00 s left'."""
    it, steps = snapshot.get("iteration"), snapshot["steps"]
    if it is None:
        return f"starting: loading the photos, building the model ({steps} iterations to go)"
    parts = [f"iteration {it}/{steps} ({100.0 * it / max(1, steps):.1f}%)"]
    if snapshot.get("text"):
        parts.append(snapshot["text"])
    parts.append(rate_and_time_left(snapshot))
    return " | ".join(parts)


def rate_and_time_left(snapshot: dict[str, Any]) -> str:
    """'0.43 s/it, about 35 min 00 s left' (it/s when faster than one a second; 'time left n/a' without a rate)."""
    rate, left = snapshot.get("rate"), snapshot.get("eta_s")
    if not rate:
        return "time left n/a"
    speed = f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it"
    return f"{speed}, about {duration(left)} left" if left is not None else speed


class TrainingProgress(Follower):
    """Progress of one training task from its events (tasks/train.py): a context manager around the training.

    run: the key the task's events carry; steps: the run's last iteration; artifact: an
    ``flows.artifacts.Progress`` or None; client: the distributed Client to subscribe with; log: a logger's info.
    Rate and time left come from the worker's own clock (the events' "seconds" since the task's loop started)
    over the last ``TRAIN_RATE_WINDOW_S``, counted from the first reported iteration (data loading and model
    building do not skew them)."""

    def __init__(self, run: str, steps: int, *, client: Any = None, artifact: Any = None,
                 log: Callable[..., None] | None = None, log_every_s: float | None = None, tick_s: float = TICK_S,
                 clock: Callable[[], float] = time.monotonic):
        self.run, self.steps, self.client, self.artifact, self.log = run, steps, client, artifact, log
        self.log_every_s = log_every_s if log_every_s is not None else progress_every_s()
        self.tick_s, self.clock = tick_s, clock
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._arrived = 0.0
        self._rate = RateEstimate(TRAIN_RATE_WINDOW_S, min_span_s=2.0)
        self._last_emitted: tuple | None = None
        self._last_artifact = float("-inf")
        self._last_log = clock()
        self.started = clock()
        self.events = 0

    def on_event(self, event: Any) -> None:
        """A Dask event ``(timestamp, msg)`` from the training task (other runs' events are ignored)."""
        msg = event[1] if isinstance(event, tuple | list) and len(event) == 2 else event
        if not isinstance(msg, dict) or msg.get("run") != self.run:
            return
        try:
            it, first, seconds = int(msg["iteration"]), int(msg.get("first_iteration") or 0), float(msg["seconds"])
        except (KeyError, TypeError, ValueError):
            return
        with self._lock:
            self.events += 1
            if self._latest is not None and it < self._latest["iteration"]:
                return  # a late, older event
            self._latest = {"iteration": it, "first_iteration": first, "seconds": seconds,
                            "steps": int(msg.get("steps") or self.steps), "text": str(msg.get("text") or ""),
                            "metrics": dict(msg.get("metrics") or {})}
            self._arrived = self.clock()
            self._rate.add(seconds, it - first)

    def finished(self, iteration: int) -> None:
        """The task returned at this iteration: the count is final even if its last event is still on its way."""
        with self._lock:
            if self._latest is None or self._latest["iteration"] < iteration:
                self._latest = (self._latest or {"first_iteration": 0, "seconds": 0.0, "steps": self.steps,
                                                 "text": "", "metrics": {}}) | {"iteration": iteration}
                self._arrived = self.clock()

    def snapshot(self) -> dict[str, Any]:
        """{"iteration" (None before the first event), "steps", "text", "metrics", "rate" (it/s), "eta_s",
        "elapsed_s", "done", "total"} now."""
        now = self.clock()
        with self._lock:
            latest = dict(self._latest) if self._latest else None
            rate = self._rate.rate(latest["seconds"]) if latest else None
            arrived = self._arrived
        snap: dict[str, Any] = {"steps": self.steps, "iteration": None, "text": "", "metrics": {}, "rate": None,
                                "eta_s": None, "elapsed_s": round(now - self.started, 1)}
        if latest:
            snap |= {k: latest[k] for k in ("iteration", "text", "metrics", "steps")}
            left = max(0, snap["steps"] - latest["iteration"])
            if left == 0:
                snap["eta_s"] = 0.0
            elif rate:
                snap["eta_s"] = round(max(0.0, left / rate - (now - arrived)), 1)
            snap["rate"] = round(rate, 4) if rate else None
        snap |= {"done": snap["iteration"] or 0, "total": snap["steps"]}
        return snap

    def tick(self, final: bool = False) -> dict[str, Any]:
        """Emit the snapshot when it changed; the artifact and the log line when they are due."""
        snap = self.snapshot()
        line = describe_training(snap)
        now = self.clock()
        key = (snap["iteration"], snap["text"], snap["rate"] is None)
        if key != self._last_emitted or final:
            self._last_emitted = key
            emit({"event": "progress", "job": "train", "unit": "iterations", "final": final, "failed": 0,
                  # the bar's words: time left first (what a narrow terminal keeps), then the losses
                  "line": line, "status": " | ".join(p for p in (rate_and_time_left(snap), snap["text"]) if p)}
                 | snap)
        if self.artifact is not None and snap["iteration"] is not None and \
                (final or now - self._last_artifact >= ARTIFACT_EVERY_S):
            self._last_artifact = now
            self.artifact.update(snap["iteration"] / max(1, snap["steps"]), line)
        if self.log is not None and not final and snap["iteration"] is not None and \
                now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.log("progress: %s", line)
        return snap
