"""Fixtures shared by the core tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, restored after: bit-exact comparisons need the same thread count in
    both runs, and one thread is also the fastest on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def fp32_enhancers():
    """The core tests compare the Enhancer with fp32 references: its CPU bf16 'auto' (on native-bf16 CPUs, after the
    first images) is switched off for the session; tests/core/test_bf16.py lifts this for its own tests. Set in
    os.environ at session start, before any module-scoped Enhancer fixture is built."""
    import os

    previous = os.environ.get("DPE_BF16")
    os.environ["DPE_BF16"] = "off"
    yield
    if previous is None:
        os.environ.pop("DPE_BF16", None)
    else:
        os.environ["DPE_BF16"] = previous
