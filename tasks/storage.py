"""Storage tasks run in the flow process: list inputs, read the destination's state, write reports.

Each retries with exponential backoff on transient storage errors only (a missing folder fails at once).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.listing import Listing, list_sizes, remove_stale_temp_files, scan
from tasks.manifest import load_state
from tasks.retry import is_transient_storage_error
from tasks.storage_options import use_storage_block


def retry_on_storage_error(task, task_run, state) -> bool:  # noqa: ARG001  (Prefect's signature)
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as error:  # result unavailable: be conservative
        exc = error
    return isinstance(exc, BaseException) and is_transient_storage_error(exc)


# Storage tasks: retried on transient storage errors only; never cached (they read or change storage, so a
# cached result would be stale or skip a write, whatever the user's result-persistence settings).
STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=1),
                   "retry_condition_fn": retry_on_storage_error, "cache_policy": NO_CACHE}


@task(name="list-inputs", **STORAGE_RETRIES)
def list_inputs(source_url: str, include: list[str], exclude: list[str], formats: list[str] | None,
                include_hidden: bool = False, storage_block: str | None = None) -> Listing:
    """The inputs under source_url and what was left out with the reason (links not followed, unreadable...)."""
    use_storage_block(storage_block)
    return scan(source_url, include, exclude, formats, include_hidden)


@task(name="read-destination", **STORAGE_RETRIES)
def read_destination(dest_url: str, storage_block: str | None = None) -> dict[str, Any]:
    """The destination's state: manifest + unmerged shard records, file sizes, stale temp files removed."""
    use_storage_block(storage_block)
    removed = remove_stale_temp_files(dest_url)
    return {"state": load_state(dest_url), "sizes": list_sizes(dest_url), "removed_temp_files": removed}
