"""What `dpe enhance`, `dpe ingest` and `dpe train` show while their flow runs in this process.

* When the flow starts: the run's name and its page in the Prefect UI (always, terminal or not).
* In a terminal: a bar that moves per photo (the workers' reports, flows/progress.py) with done/total, failures,
  rate and time left.
* Without a terminal (cron, nohup, a pipe): no bar; one line every ``$DPE_PROGRESS_EVERY_S`` seconds (default 30),
  ``05:12:03 enhance: 12/46 photos (26%), 0 failed, 2.31 photos/s, about 15 s left``; a training run's line is
  ``05:12:03 train: iteration 120/5000 (2.4%) | G loss 0.12 | critic loss -1.2 | ... | 0.43 s/it, about 35 min 00 s
  left`` (flows/progress.py TrainingProgress), and its phases (preparing the photos) get a line each.

Imports neither prefect nor torch.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.progress import LISTENERS, describe, duration, progress_every_s


class RunDisplay:
    """Context manager: listens to the flow's progress events and shows them on console (stderr)."""

    def __init__(self, console: Console, job: str, unit: str = "photos", every_s: float | None = None):
        self.console, self.job, self.unit = console, job, unit
        self.terminal = console.is_terminal
        self.every_s = every_s if every_s is not None else progress_every_s()
        self.bar = Progress(TextColumn(f"[bold]{job}[/bold]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                            transient=False, disable=not self.terminal)
        self.task = self.bar.add_task(job, total=None, status="listing ...")
        self._last_line = time.monotonic()
        self._last_text = ""
        self.lines = 0

    def _line(self, text: str) -> None:
        self.console.print(f"{datetime.now():%H:%M:%S} {self.job}: {text}", markup=False, highlight=False)
        self.lines += 1

    def listener(self, event: dict[str, Any]) -> None:
        """Called by the flow (flows/progress.py emit) with each event (those of other jobs, such as the ingest
        subflows of a training run, are left out)."""
        if event.get("job", self.job) != self.job:
            return
        kind = event.get("event")
        if kind == "phase":
            self.bar.update(self.task, status=event["text"])
            if not self.terminal:
                self._line(event["text"])
        elif kind == "started" and event.get("url"):
            self.console.print(f"{self.job} run {event.get('name')}: {event['url']}", markup=False,
                               highlight=False)
        elif kind == "planned":
            done = event["total"] - event["todo"]
            self.bar.update(self.task, total=event["total"], completed=done,
                            status=f"{done} already done" if done else "")
            if not self.terminal:
                self._line(f"{event['total']} {self.unit}: {event['todo']} to do, {done} already done")
        elif kind == "progress":
            rate, left = event.get("rate"), event.get("eta_s")
            parts = [f"{event['failed']} failed" if event.get("failed") else "",
                     f"{rate:.2f} {self.unit}/s" if rate else "",
                     f"{duration(left)} left" if left is not None and rate else ""]
            # A training run brings its own words (losses, s/it); a photo run's are built here.
            status = event["status"] if "status" in event else " · ".join(p for p in parts if p)
            self.bar.update(self.task, total=event["total"], completed=event["done"], status=status)
            now = time.monotonic()
            text = event.get("line") or describe(event, self.unit)
            due = now - self._last_line >= self.every_s or event.get("final")
            if not self.terminal and due and text != self._last_text:
                self._last_line, self._last_text = now, text
                self._line(text)

    def __enter__(self) -> RunDisplay:
        LISTENERS.append(self.listener)
        self.bar.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.__exit__(*exc_info)
        LISTENERS.remove(self.listener)
