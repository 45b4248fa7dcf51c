"""Storage credentials and options for fsspec, loaded on each process that needs them.

Credentials never travel as parameters: fsspec reads them from the environment (AWS_* for s3fs,
``FSSPEC_<PROTOCOL>_<KWARG>`` or fsspec config files) or from a Prefect Secret block loaded into
``fsspec.config.conf`` on each process (``use_storage_block``).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec


def apply_storage_config(config: dict[str, dict[str, Any]] | None) -> None:
    """Merge per-protocol fsspec defaults ({"s3": {"endpoint_url": ..., "key": ...}}) into fsspec.config.conf.

    Used with a Prefect Secret block: the flow and every task load the block by name on their own process,
    so credentials never appear in parameters, task inputs or the Dask graph.
    """
    if not config:
        return
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise ValueError('storage config must be a JSON object of per-protocol options, e.g. {"s3": {"key": "..."}}')
    for protocol, options in config.items():
        fsspec.config.conf.setdefault(protocol, {}).update(options)
    fsspec.AbstractFileSystem.clear_instance_cache()


_BLOCKS_LOADED: set[str] = set()


def use_storage_block(name: str | None) -> None:
    """Load a Prefect Secret block holding per-protocol fsspec options (JSON) into this process, once.

    The block is read by name on each process that needs it (flow process, every Dask worker), so the
    credentials never travel in parameters or the task graph.
    """
    if not name or name in _BLOCKS_LOADED:
        return
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    if isinstance(value, str | bytes):
        value = json.loads(value)
    apply_storage_config(value)
    _BLOCKS_LOADED.add(name)
