"""`dpe deploy` and `dpe run` against the session's real Prefect server; a deployment run by a real process worker
(`prefect worker start`, started and stopped by its handle) on real photos in moto S3, on the session's Dask
workers, where one photo is corrupt: the run ends "Completed with failures", `dpe run --watch` exits 1, the logs
name the failed file, and the flow's event carries the counts."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO, dpe_command, stop_process
from tests.tasks.helpers import ARCHIVE

POOL = "dpe-ops-test"


def _dpe(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(dpe_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ops_env(prefect_server, s3_endpoint, tmp_path_factory):
    _, s3_env = s3_endpoint
    home = tmp_path_factory.mktemp("ops-home")
    return dict(os.environ) | s3_env | {"PREFECT_API_URL": prefect_server.api_url, "DPE_HOME": str(home / "dpe"),
                                        "PREFECT_HOME": str(home / "prefect"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def deployed(ops_env):
    """`dpe deploy` once for the module (the tests below read what it made)."""
    started = time.perf_counter()
    done = _dpe(["deploy", "--pool", POOL, "--concurrency-limit", "3", "--json"], ops_env)
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"dpe deploy (pool + 4 deployments): {time.perf_counter() - started:.1f} s")
    return json.loads(done.stdout)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_deploy_creates_the_pool_and_every_deployment_and_is_idempotent(deployed, ops_env):
    import yaml

    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    assert deployed["pool"] == "created"
    assert sorted(d["deployment"].split("/")[1] for d in deployed["deployments"]) == sorted(
        d["name"] for d in spec["deployments"])
    with _client() as client:
        pool = client.read_work_pool(POOL)
        assert pool.type == "process" and pool.concurrency_limit == 3
        assert "command" in json.dumps(pool.base_job_template)  # Prefect's process job template
        nightly = client.read_deployment_by_name("enhance-archive/nightly-enhance")
        assert nightly.work_pool_name == POOL
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [
            ("0 2 * * *", "Europe/Berlin", True)]
        assert nightly.parameters == spec["deployments"][0]["parameters"]
        # Tags to filter by, schema enforced, and one run at a time where runs would race (queued, not dropped).
        for name, tags, limit in (("enhance-archive/nightly-enhance", {"dpe", "enhance", "nightly"}, 1),
                                  ("enhance-archive/enhance-adhoc", {"dpe", "enhance", "adhoc"}, None),
                                  ("ingest-dataset/ingest", {"dpe", "ingest"}, None),
                                  ("train-style/train-style", {"dpe", "train", "gpu"}, 1)):
            deployment = client.read_deployment_by_name(name)
            assert set(deployment.tags) == tags and deployment.enforce_parameter_schema, name
            gcl = deployment.global_concurrency_limit
            assert (gcl.limit if gcl else None) == limit, name
            if limit:
                assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE", name
        schema = nightly.parameter_openapi_schema
        enhance_fields = schema["definitions"]["EnhanceParams"]["properties"]
        assert enhance_fields["strength"]["maximum"] == 1 and enhance_fields["mode"]["enum"] == ["full", "paper",
                                                                                                "tiled"]
        assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $DPE_CHECKOUT }}"}}]  # resolved on the worker, not where `dpe deploy` ran
        before = {d.name: (d.id, len(d.schedules)) for d in client.read_deployments()}

    again = _dpe(["deploy", "--pool", POOL, "--concurrency-limit", "2", "--json"], ops_env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout)["pool"] == "updated"
    with _client() as client:
        assert {d.name: (d.id, len(d.schedules)) for d in client.read_deployments()} == before  # no duplicates
        assert client.read_work_pool(POOL).concurrency_limit == 2


def test_run_deep_merges_overrides_into_the_deployments_defaults(deployed, ops_env):
    done = _dpe(["run", "enhance-adhoc", "--param", "params.strength=0.5", "--param", "params.model=warm:2",
                 "--param", 'params.include=["2004/*"]', "--json"], ops_env)
    assert done.returncode == 0, done.stderr[-3000:]
    flow_run_id = json.loads(done.stdout)["id"]
    with _client() as client:
        run = client.read_flow_run(flow_run_id)
        deployment = client.read_deployment(run.deployment_id)
    assert run.parameters == {"params": deployment.parameters["params"] | {
        "strength": 0.5, "model": "warm:2", "include": ["2004/*"]}}
    assert run.parameters["params"]["dest_url"] == "s3://photo-archive/enhanced-adhoc"  # a default that survived
    assert run.state.is_scheduled()
    with _client() as client:  # nobody will run it: take it off the queue
        from prefect.states import Cancelled

        client.set_flow_run_state(flow_run_id, Cancelled(message="test only"), force=True)

    bad = _dpe(["run", "enhance-adhoc", "--param", "params.strength=5"], ops_env)
    assert bad.returncode == 2 and "strength" in bad.stderr
    unknown = _dpe(["run", "no-such-deployment"], ops_env)
    assert unknown.returncode == 2 and "no deployment named no-such-deployment" in unknown.stderr


class EventListener:
    """Collects the events whose names start with a prefix, from the server's live event stream."""

    def __init__(self, prefixes: list[str]):
        self.prefixes, self.events, self.ready = prefixes, [], threading.Event()
        self.stop = threading.Event()
        context = contextvars.copy_context()  # the session's Prefect settings (a thread starts without them)
        self.thread = threading.Thread(target=lambda: context.run(asyncio.run, self._listen()), daemon=True)

    async def _listen(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(prefix=self.prefixes))) as sub:
            self.ready.set()
            while not self.stop.is_set():
                try:
                    event = await asyncio.wait_for(sub.__anext__(), timeout=1.0)
                except TimeoutError:
                    continue
                self.events.append(event)

    def __enter__(self) -> EventListener:
        self.thread.start()
        assert self.ready.wait(60), "event stream not ready"
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.mark.slow
def test_worker_runs_a_deployment_with_a_corrupt_photo_completed_with_failures(deployed, ops_env, dask_address,
                                                                             testdata, tmp_path):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    if not fs.exists("photo-archive"):
        fs.mkdir("photo-archive")
    good = {k: v for k, v in ARCHIVE.items() if k.startswith("2004/")}
    for rel, src in (good | {"bad/corrupt_random.jpg": "edge/corrupt_random.jpg"}).items():
        fs.pipe_file(f"photo-archive/uploads/{rel}", (testdata / src).read_bytes())

    worker_env = ops_env | {"DPE_CHECKOUT": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name",
                               "ops-test-worker"], env=worker_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        with EventListener(["dpe.enhance.", "prefect.flow-run.Completed"]) as events:
            started = time.perf_counter()
            done = _dpe(["run", "enhance-archive/nightly-enhance", "--watch", "--poll", "1", "--json",
                         "--param", f"params.dask_address={dask_address}", "--param", "params.storage_block=null",
                         "--param", "params.mode=paper", "--param", "params.shard_size=2"], ops_env)
            elapsed = time.perf_counter() - started
            # A destination inside the source passes the schema but not the flow's own validation on the worker:
            # the remote run fails and --watch exits 2 (bad usage), as `dpe enhance` would.
            refused = _dpe(["run", "enhance-archive/nightly-enhance", "--watch", "--poll", "1", "--no-logs",
                            "--param", "params.dest_url=s3://photo-archive/uploads/enhanced"], ops_env)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len({e.event for e in events.events}) < 2:
                time.sleep(0.5)
    finally:
        stop_process(worker)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text()
    assert done.returncode == 1, f"{done.stderr[-4000:]}\nworker:\n{worker_log[-3000:]}"
    result = json.loads(done.stdout)
    assert result["state"] == "Completed with failures"
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "state: Failed" in refused.stderr
    assert f"{len(good)} enhanced" in result["message"] and "1 failed" in result["message"], done.stderr[-5000:]
    print(f"deployment run through a process worker: {elapsed:.1f} s from `dpe run` to the final state")

    # Parameters: the overrides plus every other default of the deployment's nested params.
    params = result["parameters"]["params"]
    assert params["source_url"] == "s3://photo-archive/uploads" and params["dest_url"] == "s3://photo-archive/enhanced"
    assert params["model"] == "default" and params["mode"] == "paper" and params["storage_block"] is None
    fs.invalidate_cache()
    outputs = sorted(p.removeprefix("photo-archive/enhanced/") for p in fs.find("photo-archive/enhanced")
                     if "/.dpe/" not in p)
    assert outputs == sorted(good)

    # The watch printed the run's logs: the failed file named once with its reason, shard lines in words.
    assert "WARNING 1 failed:" in done.stderr and "bad/corrupt_random.jpg" in done.stderr, done.stderr
    assert "shard 0: " in done.stderr and " ok, " in done.stderr and "{'ok'" not in done.stderr, done.stderr
    with _client() as client:
        run = client.read_flow_run(result["id"])
    assert run.state.type.value == "COMPLETED" and run.state.name == "Completed with failures"
    assert "photos-failed" in run.tags and "dpe" in run.tags  # the tag filter finds it; deployment tags kept

    from tests.system.test_enhance import flow_run_artifacts

    artifacts = {a.type: a for a in flow_run_artifacts(result["id"])}
    in_words = f"{len(good)} ok, 1 failed, 0 skipped of {len(good) + 1} photos"
    assert in_words in artifacts["table"].description and in_words in artifacts["markdown"].description
    table = artifacts["table"].data if isinstance(artifacts["table"].data, str) else json.dumps(
        artifacts["table"].data)
    assert "n/a" in table and "null" not in table and "None" not in table  # e.g. no gap between shards of a worker

    names = {e.event: e for e in events.events if str(e.resource.id) == f"prefect.flow-run.{result['id']}"}
    assert "prefect.flow-run.Completed with failures" in names  # the server's own state event
    ours = names["dpe.enhance.completed-with-failures"]
    assert ours.payload["counts"] == {"ok": len(good), "failed": 1, "skipped": 0, "total": len(good) + 1}
    assert ours.payload["dest_url"] == "s3://photo-archive/enhanced"
    assert any(r.id.startswith("prefect.deployment.") for r in ours.related)  # attached from the run context


def test_alerts_automation_is_applied_with_a_notification_block(deployed, ops_env):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block_id = CustomWebhookNotificationBlock(name="ops", url="http://127.0.0.1:9/hook").save("dpe-ops-alerts",
                                                                                             overwrite=True)
    for _ in range(2):  # applying twice updates the one automation
        done = _dpe(["deploy", "--pool", POOL, "--concurrency-limit", "2", "--json", "--alerts-block",
                     "custom-webhook/dpe-ops-alerts"], ops_env)
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["automations"] == {"dpe-photos-failed": "updated"}
    with _client() as client:
        [automation] = client.read_automations_by_name("dpe-photos-failed")
    assert automation.trigger.expect == {"dpe.enhance.completed-with-failures", "dpe.ingest.completed-with-failures"}
    assert [str(a.block_document_id) for a in automation.actions] == [str(block_id)]
    missing = _dpe(["deploy", "--pool", POOL, "--alerts-block", "custom-webhook/nope"], ops_env)
    assert missing.returncode == 2 and "no custom-webhook block named nope" in missing.stderr


def test_prefect_file_header_commands_work_as_written(prefect_server, ops_env):
    """The Prefect commands in deploy/prefect.yaml's header, run as written (from the repository root) against the
    session's server, make the pool with its limit and every deployment; the dpe commands there exist."""
    import shlex

    header = (REPO / "deploy" / "prefect.yaml").read_text().split("\nname:")[0]
    assert "dpe deploy" in header and "DPE_CHECKOUT=$PWD prefect worker start --pool dpe" in header
    commands = [line.lstrip("#").strip() for line in header.splitlines() if line.lstrip("#").strip().startswith(
        "prefect work-pool") or line.lstrip("#").strip().startswith("prefect --no-prompt deploy")]
    assert len(commands) == 3, commands
    for command in commands:
        args = shlex.split(command)
        done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ops_env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    with _client() as client:
        assert client.read_work_pool("dpe").concurrency_limit == 4
        for name in ("nightly-enhance", "enhance-adhoc"):
            assert client.read_deployment_by_name(f"enhance-archive/{name}").work_pool_name == "dpe"
        assert client.read_deployment_by_name("train-style/train-style").work_pool_name == "dpe"
    assert (REPO / "docs" / "operations.md").is_file()
