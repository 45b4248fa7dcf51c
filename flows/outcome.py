"""How a finished run tells operators what happened: its final state, a custom event, and a failure log line.

The Prefect dashboard counts failed runs by state *type*; a run whose photos failed still completes (the other
photos are done and recorded), so it would be invisible there. Such a run ends in a ``Completed`` state named
"Completed with failures" (the server then emits ``prefect.flow-run.Completed with failures``) and the flow emits
``dpe.<job>.completed-with-failures`` (or ``dpe.<job>.completed``) with the counts: either can trigger a Prefect
Automation (docs/operations.md, deploy/automations/). The state stays of type COMPLETED, so retries, schedules and
`dpe enhance`'s exit code 1 (some photos failed) keep working.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from prefect.states import Completed, State

from dpe_core.io.places import printable

FAILURES_STATE = "Completed with failures"
# Prefect's dashboard counts failed runs by state *type* and its deployment Runs tab filters by state *name*;
# both filter by tag, so a run whose photos failed also carries this tag.
FAILURES_TAG = "photos-failed"
FAILURES_LOGGED = 20  # failed files named in the run's WARNING line; the report lists them all


def na(value: Any) -> str:
    """A figure for people: 'n/a' when there is none (never 'None')."""
    return "n/a" if value is None or value == "" else str(value)


def counts_words(ok: int, failed: int, skipped: int | None = None) -> str:
    """'48 ok, 2 failed' (, '3 skipped'): counts in words for log lines and descriptions."""
    words = f"{ok} ok, {failed} failed"
    return words if skipped is None else f"{words}, {skipped} skipped"


def log_failures(logger: logging.Logger | logging.LoggerAdapter, failures: list[dict[str, Any]], *,
                 name_key: str = "input", limit: int = FAILURES_LOGGED, what: str = "failed") -> None:
    """One WARNING naming the failed files and their reasons: the first ``limit``, then '... and N more'."""
    if not failures:
        return
    lines = []
    for record in failures[:limit]:
        name, reason = printable(record.get(name_key, "?")), printable(record.get("reason") or "no reason recorded")
        lines.append(f"  {reason}" if name in reason else f"  {name}: {reason}")  # reasons often name the file
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more (all in the run's report)")
    logger.warning("%d %s:\n%s", len(failures), what, "\n".join(lines))


def _flow_run() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run if ctx and ctx.flow_run else None


def emit_outcome(job: str, counts: dict[str, int], *, dest_url: str | None = None,
                 extra: dict[str, Any] | None = None) -> str:
    """Emit ``dpe.<job>.completed`` or ``dpe.<job>.completed-with-failures`` with the counts; returns its name.

    The primary resource is the flow run (what an automation matches, like Prefect's own state events); the
    destination is a related resource. Reporting only: a failed emit never fails a finished run."""
    name = f"dpe.{job}.completed-with-failures" if counts.get("failed") else f"dpe.{job}.completed"
    run = _flow_run()
    if run is not None:
        resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name}
    else:
        resource = {"prefect.resource.id": f"dpe.{job}.local-run", "prefect.resource.name": "local run"}
    related = []
    if dest_url:
        related.append({"prefect.resource.id": f"dpe.destination.{dest_url}", "prefect.resource.role": "destination",
                        "prefect.resource.name": dest_url})
    with contextlib.suppress(Exception):
        from prefect.events import emit_event

        emit_event(event=name, resource=resource, related=related,
                   payload={"counts": counts, "dest_url": dest_url} | (extra or {}))
    return name


def tag_flow_run(tag: str) -> None:
    """Add ``tag`` to the current flow run (none outside a flow run). Reporting only: never raises."""
    run = _flow_run()
    if run is None:
        return
    with contextlib.suppress(Exception):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            tags = list(client.read_flow_run(run.id).tags or [])
            if tag not in tags:
                client.update_flow_run(run.id, tags=[*tags, tag])


def final_state(job: str, counts: dict[str, int], message: str, data: Any, *, dest_url: str | None = None,
                extra: dict[str, Any] | None = None) -> State:
    """The run's final state ("Completed with failures" when counts['failed'] > 0), after emitting its event.

    ``counts`` holds at least ok / failed / skipped."""
    emit_outcome(job, counts, dest_url=dest_url, extra=extra)
    if counts.get("failed"):
        tag_flow_run(FAILURES_TAG)
        return Completed(name=FAILURES_STATE, message=message, data=data)
    return Completed(message=message, data=data)


def has_failures(state: Any) -> bool:
    """Whether a completed run's state says some photos failed."""
    return bool(state is not None and state.is_completed() and state.name == FAILURES_STATE)
