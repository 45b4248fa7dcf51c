"""Which dpe a process runs: the flow and every Dask worker must run the same code (checked before any work).

Plain Python, no torch: the flow calls ``dpe_version()`` itself and on every worker with ``client.run``.
``DPE_VERSION_CHECK`` in the flow's environment says what must match: ``source`` (default: the release and the
digest of the sources), ``release`` (the release number only: for a developer whose checkout changes under a
running local cluster, and the test suite, where other work edits files while workers run), ``off``.
"""

from __future__ import annotations

import functools
import hashlib
import os
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


def expected_version() -> str | None:
    """What the flow requires of its workers (DPE_VERSION_CHECK): dpe_version(), its release part, or None."""
    mode = os.environ.get("DPE_VERSION_CHECK", "source").strip().lower()
    if mode == "off":
        return None
    if mode == "release":
        return dpe_version().split("+", 1)[0]
    return dpe_version()


def same_version(expected: str, actual: str) -> bool:
    """Whether a worker's dpe_version() satisfies expected (a full version, or a release number alone)."""
    return actual == expected if "+" in expected else actual.split("+", 1)[0] == expected


class VersionMismatch(RuntimeError):
    """This process runs other dpe code than the flow that sent the work."""


def require_version(expected: str | None) -> None:
    """Raise VersionMismatch, naming this worker and both versions, when expected is set and differs from
    dpe_version() (a worker that joined the cluster after the flow's check, with other code)."""
    if expected and not same_version(expected, dpe_version()):
        import socket

        raise VersionMismatch(f"worker {socket.gethostname()}:{os.getpid()} runs dpe {dpe_version()}, the flow runs "
                              f"dpe {expected}: this worker takes no work of this run (install the same dpe on it)")
