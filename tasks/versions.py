"""Which dpe a process runs: the flow and every Dask worker must run the same code (checked before any work).

Plain Python, no torch: the flow calls ``dpe_version()`` itself and on every worker with ``client.run``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGES = ("dpe_core", "tasks", "flows")  # what a worker imports when it runs a shard (flows: the task's pickle)


@functools.cache
def dpe_version() -> str:
    """'0.1.0+src.1a2b3c4d5e6f': the package version and a digest of the Python sources of dpe_core, tasks and
    flows as this process found them the first time it asked, so two installs of one version number with different
    code (an edited checkout, a stale image) do not pass for one another."""
    import dpe_core

    root = Path(dpe_core.__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return f"{dpe_core.__version__}+src.{digest.hexdigest()[:12]}"


class VersionMismatch(RuntimeError):
    """This process runs other dpe code than the flow that sent the work."""


def require_version(expected: str | None) -> None:
    """Raise VersionMismatch, naming this worker and both versions, when expected is set and differs from
    dpe_version() (a worker that joined the cluster after the flow's check, with other code)."""
    if expected and dpe_version() != expected:
        import os
        import socket

        raise VersionMismatch(f"worker {socket.gethostname()}:{os.getpid()} runs dpe {dpe_version()}, the flow runs "
                              f"dpe {expected}: this worker takes no work of this run (install the same dpe on it)")
