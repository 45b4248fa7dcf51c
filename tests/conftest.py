"""Shared test fixtures: where the real third-party test photos live, and the session's real services.

Tests that need ../shared/testdata find it through DPE_TESTDATA (default: ../shared/testdata next to the
repository) and skip with a clear message when it is absent; the core suite does not need it.

Session services (tests/system, tests/reliability), one of each for the whole session, each started only when a
test asks for it and stopped by its handle:
* moto's ThreadedMotoServer on loopback (an S3 endpoint; AWS_* variables point s3fs at it);
* `prefect server start` (SQLite in a temp dpe home) through flows.server, the same code the CLI uses;
* a Dask LocalCluster with 2 worker processes of 1 thread, started after PREFECT_API_URL and the AWS
  variables are in its environment (workers cannot see Prefect's temporary in-process API).
Environment changes are undone at the end of the session.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = REPO_ROOT
TESTDATA = Path(os.environ.get("DPE_TESTDATA", REPO_ROOT.parent / "shared" / "testdata")).resolve()
# Flows check that Dask workers run the flow's dpe (tasks/versions.py): by default the release *and* a digest of the
# sources. A test session keeps workers for minutes while files of the checkout may be edited, so the suite compares
# the release only; tests/system/test_gpu_cluster.py switches the source check on where it tests it.
os.environ.setdefault("DPE_VERSION_CHECK", "release")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """Root of the real test photos (camera/, orientation/, edge/, heic/, natural/ ...)."""
    if not (TESTDATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"test photos not found at {TESTDATA} (set DPE_TESTDATA to the shared testdata folder)")
    return TESTDATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """(endpoint URL, env) of a moto S3 server; the env is what a user would export for real S3."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.AbstractFileSystem.clear_instance_cache()
    try:
        yield endpoint, env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect API for the session; PREFECT_API_URL set for this process and its children."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import start_local_server

    home = tmp_path_factory.mktemp("prefect-home")
    server = start_local_server(home, services=False, die_with_parent=True)
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server
            from flows.cli import _drain_prefect_clients

            _drain_prefect_clients()  # the last logs and events, while the server still answers
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        server.stop()


@pytest.fixture(scope="session")
def dask_address(prefect_server, s3_endpoint):
    """Scheduler address of a 2-worker, 1-thread-each LocalCluster that reports to the session's server."""
    from distributed import LocalCluster

    from flows.cluster import torch_friendly_spawn

    _, s3_env = s3_endpoint
    with torch_friendly_spawn():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.WARNING, env={"PREFECT_API_URL": prefect_server.api_url} | s3_env)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture
def cli_env(prefect_server, s3_endpoint, tmp_path):
    """Environment for `dpe` subprocesses: the session's Prefect API and S3 endpoint, a private dpe home."""
    _, s3_env = s3_endpoint
    env = dict(os.environ) | s3_env
    env |= {"PREFECT_API_URL": prefect_server.api_url, "DPE_HOME": str(tmp_path / "dpe-home"),
            "PREFECT_HOME": str(tmp_path / "prefect-client-home"), "PYTHONUNBUFFERED": "1"}
    return env


def dpe_command(*args: str) -> list[str]:
    """The `dpe` console script of this environment."""
    return [str(Path(sys.executable).parent / "dpe"), *args]


def stop_process(process, grace_s: float = 30.0) -> None:
    """Stop a process a test started, by its handle: SIGTERM, then SIGKILL if it is still there after grace_s."""
    import subprocess

    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def stop_dpe_server(server, port: int) -> None:
    """Stop a `dpe server` a test started (SIGINT, as Ctrl-C; SIGKILL after 60 s) and check its API is down."""
    import signal
    import time

    from flows.server import healthy

    server.send_signal(signal.SIGINT)
    try:
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    deadline = time.monotonic() + 30
    while healthy(f"http://127.0.0.1:{port}/api") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not healthy(f"http://127.0.0.1:{port}/api")


@pytest.fixture(scope="session")
def model_ref() -> str:
    """The model the enhance tests use: the bundled default, what `dpe enhance` uses without --model."""
    return "default"
