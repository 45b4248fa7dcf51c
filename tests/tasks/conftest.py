"""Fixtures of the task tests (no Prefect server, no cluster)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_ref(tmp_path_factory) -> str:
    from tests.tasks.helpers import model_for_tests

    return model_for_tests(tmp_path_factory.mktemp("model"))
