"""Shared test fixtures: where the real third-party test photos live.

Tests that need ../shared/testdata find it through DPE_TESTDATA (default: ../shared/testdata next to the
repository) and skip with a clear message when it is absent; the core suite does not need it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("DPE_TESTDATA", REPO_ROOT.parent / "shared" / "testdata")).resolve()


@pytest.fixture(scope="session")
def testdata() -> Path:
    """Root of the real test photos (camera/, orientation/, edge/, heic/, natural/ ...)."""
    if not (TESTDATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"test photos not found at {TESTDATA} (set DPE_TESTDATA to the shared testdata folder)")
    return TESTDATA
