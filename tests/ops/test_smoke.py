"""deploy/smoke.sh, the operator's end-to-end check of an install, run as an operator runs it: its own Prefect server
on a free loopback port, `dpe deploy`, a process worker, the ad-hoc enhance deployment on real photos (one corrupt)
through that worker with a local Dask cluster; it prints the run's summary, stops what it started and exits with the
run's code (1: a photo failed)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from flows.server import healthy
from tests.conftest import REPO
from tests.tasks.helpers import image_files, make_folder, sha256_files

PHOTOS = {"chelsea.png": "natural/chelsea.png", "trip/china.jpg": "natural/china.jpg",
          "astronaut.png": "natural/astronaut.png", "corrupt_random.jpg": "edge/corrupt_random.jpg"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_smoke_script_runs_the_adhoc_deployment_through_a_worker_and_cleans_up(testdata, tmp_path):
    src = make_folder(tmp_path / "photos", testdata, PHOTOS)
    before = sha256_files(src)
    dst = tmp_path / "enhanced"
    # The operator's shell: no Prefect server configured (the script starts its own), an unrelated one ignored.
    # (DPE_VERSION_CHECK=release from tests/conftest.py stays: other sessions edit this checkout while tests run.)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DPE_HOME"}
    env |= {"PREFECT_API_URL": "http://127.0.0.1:9/api", "TMPDIR": str(tmp_path)}

    assert subprocess.run(["bash", "deploy/smoke.sh", str(src)], cwd=REPO, env=env, capture_output=True,
                          timeout=60).returncode == 2  # usage

    started = time.perf_counter()
    done = subprocess.run(["bash", "deploy/smoke.sh", os.path.relpath(src, REPO), str(dst), "--param",
                           "params.workers=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    elapsed = time.perf_counter() - started
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    assert done.returncode == 1, report

    # The run's summary: its state and counts, its UI page, the figures and the report.
    assert re.search(r"^run \S+ \([0-9a-f-]{36}\): Completed with failures - 3 enhanced, 0 skipped, 1 failed of 4 "
                     r"photos", done.stdout, re.M), report
    assert re.search(r"^UI: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}$", done.stdout, re.M), report
    assert "photos 4: 3 enhanced, 0 skipped, 1 failed;" in done.stdout and "Dask workers: 1;" in done.stdout, report
    report_url = re.search(r"^report: (\S+)$", done.stdout, re.M).group(1)
    assert report_url.startswith(str(dst)) and os.path.isfile(report_url)
    # The worker's run logs came through `dpe run --watch`: the failed file is named with its reason.
    assert "corrupt_random.jpg: corrupt photo" in done.stderr, report
    assert sorted(image_files(dst)) == ["astronaut.png", "chelsea.png", "trip/china.jpg"]
    assert sha256_files(src) == before  # originals untouched

    # Everything it started is stopped, by the ids it saved; its API is gone, its temp folder removed.
    pids = {name: int(pid) for name, pid in re.findall(r"^smoke: started (\S+) \(pid (\d+)\)", done.stderr, re.M)}
    assert set(pids) == {"prefect-server", "prefect-worker"}, report
    assert all(f"smoke: stopped {name} (pid {pid})" in done.stderr for name, pid in pids.items()), report
    assert all(_gone(pid) for pid in pids.values()), pids
    api = re.search(r"started prefect-server \(pid \d+\) on (\S+)", done.stderr).group(1)
    assert not healthy(api)
    assert not list(tmp_path.glob("dpe-smoke.*"))
    print(f"deploy/smoke.sh, 4 photos, 1 Dask worker: {elapsed:.1f} s; "
          + "; ".join(line for line in done.stderr.splitlines() if re.match(r"smoke: (server|deployed|run) ", line)))


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_smoke_script_interrupted_mid_run_stops_the_run_and_everything_else(testdata, tmp_path):
    """SIGTERM (what a CI timeout or `kill` sends) while the run's Dask cluster is working: the trap stops the
    run's flow process and its Dask workers (the worker started them in a process group of their own), the worker
    and the server, by the ids it saved or read from the API, and the script exits 143."""
    src = make_folder(tmp_path / "photos", testdata, {f"{i}_{k}": v for i in range(4) for k, v in PHOTOS.items()
                                                      if k != "corrupt_random.jpg"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DPE_HOME"}
    env["TMPDIR"] = str(tmp_path)
    err_path = tmp_path / "smoke.err"
    with open(err_path, "w") as err, open(tmp_path / "smoke.out", "w") as out:
        script = subprocess.Popen(["bash", "deploy/smoke.sh", str(src), str(tmp_path / "enhanced")], cwd=REPO,
                                  env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while "Dask LocalCluster at" not in err_path.read_text() and time.monotonic() < deadline:
                assert script.poll() is None, err_path.read_text()[-4000:]
                time.sleep(0.5)
            assert "Dask LocalCluster at" in err_path.read_text()
            stopping = time.perf_counter()
            script.terminate()
            code = script.wait(120)
        finally:
            if script.poll() is None:  # the test's own clean-up if the script's failed
                script.kill()
                script.wait()
    log = err_path.read_text()
    assert code == 143, log[-4000:]
    stopped = {name: int(pid) for name, pid in re.findall(r"^smoke: stopped (\S+) \(pid (\d+)\)", log, re.M)}
    assert {"prefect-server", "prefect-worker"} <= set(stopped), log[-4000:]
    runs = [name for name in stopped if name.startswith("flow-run-")]
    assert len(runs) == 1, log[-4000:]  # the run's flow process, found through the API
    assert all(_group_gone(pid) for pid in stopped.values()), stopped  # each group: leader and children
    api = re.search(r"started prefect-server \(pid \d+\) on (\S+)", log).group(1)
    assert not healthy(api) and not list(tmp_path.glob("dpe-smoke.*"))
    print(f"smoke.sh stopped mid-run in {time.perf_counter() - stopping:.1f} s: {', '.join(stopped)}")
