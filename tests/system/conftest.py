"""The system tests' services (Prefect server, Dask cluster, moto S3) are session fixtures in tests/conftest.py,
shared with tests/reliability: one of each per session."""

from __future__ import annotations

from tests.conftest import REPO, dpe_command

__all__ = ["REPO", "dpe_command"]
