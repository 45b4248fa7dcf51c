"""Fixtures of the task tests (no Prefect server, no cluster)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_ref() -> str:
    """The model the enhance tests use: the bundled default, what `dpe enhance` uses without --model."""
    return "default"
