"""A long-lived multi-process Dask cluster, as an operator runs one: `dask scheduler` and `dask worker` processes on
loopback, started and stopped by handle, one worker declaring the resource GPU (there is no GPU here: the worker
declares the resource and runs the model on its CPU; routing is what is tested).

* inference lands only on the GPU worker, the CPU-only worker never loads the model, and a GPU worker that joins
  after the flow started is waited for (device=auto would otherwise have run on the CPU worker);
* worker plugin names are stable across processes, a second registration of a model reuses it, older models are
  unregistered and dropped from the workers;
* a worker running other dpe code stops the run before any work, naming the worker and both versions;
* TLS: a scheduler and worker with self-signed certificates, reached with --dask-security.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import stop_process
from tests.system.conftest import REPO
from tests.tasks.helpers import latest_report, make_folder

DASK = str(Path(sys.executable).parent / "dask")
PHOTOS = {f"p{i}.jpg": src for i, src in enumerate(
    ["camera/canon_s40.jpg", "camera/iphone4s_gps.jpg", "camera/nikon_d100_icc_xmp.jpg", "natural/egret.jpg",
     "camera/nokia_n70_iptc.jpg", "camera/pentax_k3ii_gps_icc_xmp.jpg"])}


class Processes:
    """Processes started by this module, each stopped by its own handle (SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.started = root, env, []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop)
        process = subprocess.Popen(args, env=env or self.env, cwd=cwd or REPO, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((process, log))
        return process

    def stop(self, process) -> None:
        for p, log in list(self.started):
            if p is process:
                if p.poll() is None:
                    stop_process(p)
                log.close()
                self.started.remove((p, log))

    def stop_all(self) -> None:
        for process, _ in reversed(list(self.started)):
            self.stop(process)


def _scheduler(procs: Processes, name: str, extra: list[str] = ()) -> tuple[object, str]:
    info = procs.root / f"{name}.json"
    process = procs.start(name, [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(info), *extra])
    deadline = time.monotonic() + 90
    while not info.is_file():
        assert process.poll() is None, (procs.root / f"{name}.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.2)
    return process, json.loads(info.read_text())["address"]


def _worker(procs: Processes, address: str, name: str, gpu: bool, extra: list[str] = (),
            env: dict[str, str] | None = None, cwd: Path | None = None):
    args = [DASK, "worker", address, "--name", name, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
            "--no-dashboard", *(["--resources", "GPU=1"] if gpu else []), *extra]
    return procs.start(name, args, env=env, cwd=cwd)


def _wait_for_worker(client, name: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
            if info.get("name") == name:
                return addr
        time.sleep(0.2)
    raise AssertionError(f"worker {name} did not join")


@pytest.fixture(scope="module")
def worker_env(prefect_server, s3_endpoint) -> dict[str, str]:
    """What an operator gives a worker: the Prefect API, storage credentials, dpe's Dask config."""
    return dict(os.environ) | s3_endpoint[1] | {"PREFECT_API_URL": prefect_server.api_url,
                                                 "DASK_CONFIG": str(REPO / "deploy" / "dask" / "dask.yaml")}


@pytest.fixture(scope="module")
def cluster(worker_env, tmp_path_factory):
    """(Processes, scheduler address): a `dask scheduler` with one CPU-only `dask worker` (cpu-0)."""
    procs = Processes(tmp_path_factory.mktemp("dask-procs"), worker_env)
    try:
        _, address = _scheduler(procs, "scheduler")
        _worker(procs, address, "cpu-0", gpu=False)
        yield procs, address
    finally:
        procs.stop_all()


def test_late_gpu_worker_is_waited_for_and_runs_every_shard(cluster, model_ref, testdata, tmp_path):
    from distributed import Client

    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams
    from tasks.models import loaded_models, plugin_name, warmup_status
    from tasks.versions import expected_version

    procs, address = cluster
    src = make_folder(tmp_path / "src", testdata, PHOTOS)
    dst = tmp_path / "dst"
    joined: dict[str, float] = {}

    def join_late() -> None:  # the GPU worker starts a few seconds after the flow
        time.sleep(4)
        joined["at"] = time.time()
        _worker(procs, address, "gpu-0", gpu=True)

    with Client(address, set_as_default=False) as client:
        cpu_addr = _wait_for_worker(client, "cpu-0")
        assert client.scheduler_info(n_workers=-1)["workers"][cpu_addr]["resources"] == {}
        started = time.time()
        threading.Thread(target=join_late, daemon=True).start()
        state = enhance_archive(EnhanceParams(
            source_url=str(src), dest_url=str(dst), model=model_ref, mode="paper", dask_address=address,
            min_gpu_workers=1, gpu_wait_s=300, registry_url=str(tmp_path / "registry")), return_state=True)
        summary = state.result()
        gpu_addr = _wait_for_worker(client, "gpu-0")
        pids = client.run(os.getpid)
        cpu_models = client.run(loaded_models, workers=[cpu_addr])[cpu_addr]
        statuses = client.run(warmup_status, plugin_name("default", "auto", None, True, None, expected_version()))

    assert joined["at"] > started  # the GPU worker really came after the flow had started
    assert summary["counts"] == {"ok": len(PHOTOS), "skipped": 0, "error": 0}
    assert summary["workers"] == 2
    workers = {int(r["worker"].rsplit(":", 1)[1]) for r in latest_report(dst)}
    assert workers == {pids[gpu_addr]}  # every photo on the GPU worker, none on cpu-0
    assert cpu_models == []  # the CPU-only worker never loaded the model
    assert statuses[cpu_addr].get("skipped") == "no GPU resource"
    assert statuses[gpu_addr]["done"] and statuses[gpu_addr]["error"] is None
    assert outputs_exist(dst)


def test_gpu_worker_joining_mid_run_takes_shards(cluster, model_ref, testdata, tmp_path):
    """Shards already queued on the first GPU worker move to a GPU worker that joins while the run is going (Dask's
    work stealing honours the GPU resource); it warms the model up by itself (the registered plugin)."""
    from distributed import Client

    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    procs, address = cluster
    photos = {f"n/{p.name}": f"natural/{p.name}" for p in sorted((testdata / "natural").iterdir()) if p.is_file()}
    src = make_folder(tmp_path / "src", testdata, photos)
    dst = tmp_path / "dst"
    first = _worker(procs, address, "gpu-a", gpu=True)
    late: dict[str, object] = {}

    def join_when_running() -> None:  # the second GPU worker starts once the first shard has finished
        deadline = time.monotonic() + 600
        while not list((dst / ".dpe" / "records").glob("*/shard-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.1)
        late["at"] = time.time()
        late["process"] = _worker(procs, address, "gpu-b", gpu=True)

    try:
        with Client(address, set_as_default=False) as client:
            _wait_for_worker(client, "gpu-a")
            threading.Thread(target=join_when_running, daemon=True).start()
            state = enhance_archive(EnhanceParams(
                source_url=str(src), dest_url=str(dst), model=model_ref, mode="paper", dask_address=address,
                min_gpu_workers=1, shard_size=2, registry_url=str(tmp_path / "registry")), return_state=True)
            summary = state.result()
            late_addr = _wait_for_worker(client, "gpu-b")
            late_pid = client.run(os.getpid, workers=[late_addr])[late_addr]
        report = latest_report(dst)
        assert summary["counts"]["ok"] == len(photos)
        late_records = [r for r in report if int(r["worker"].rsplit(":", 1)[1]) == late_pid]
        assert late_records, "the GPU worker that joined mid-run got no shard"
        assert len(late_records) < len(photos)  # it joined after the first shards were done elsewhere
    finally:
        procs.stop(first)
        if "process" in late:
            procs.stop(late["process"])


def outputs_exist(dst: Path) -> bool:
    """Every output of the run exists (the records point at files that were written)."""
    return all((dst / r["output"]).is_file() for r in latest_report(dst) if r["status"] == "ok")


def _plugin_names(client) -> list[str]:
    from tasks.models import _worker_plugin_names

    return client.run_on_scheduler(_worker_plugin_names)


def test_no_gpu_worker_in_time_stops_with_a_clear_error(cluster, prefect_server):
    """Set once for the cluster in the flow runner's dask config (dpe.min-gpu-workers), not per run."""
    import dask

    from flows.cluster import ClusterError, dask_cluster
    from flows.params import EnhanceParams

    _, address = cluster
    params = EnhanceParams(source_url="/nowhere/src", dest_url="/nowhere/dst", dask_address=address, gpu_wait_s=2)
    started = time.monotonic()
    with pytest.raises(ClusterError) as failed, dask.config.set({"dpe.min-gpu-workers": 5}):
        with dask_cluster(params):
            pass
    assert time.monotonic() - started < 60
    message = str(failed.value)
    assert "waited 2 s for 5 Dask workers offering the resource GPU" in message
    assert "--resources GPU=1" in message


def test_plugin_names_are_stable_and_old_models_are_dropped(cluster):
    from distributed import Client

    from tasks.models import EnhancerWarmup, loaded_models, register_warmup, wait_for_warmup
    from tasks.registry import bundled_models_dir

    _, address = cluster
    first = EnhancerWarmup("default", "cpu", 1)
    # The same name in another Python process (Python's hash() is salted per process; this digest is not).
    other = subprocess.run([sys.executable, "-c", "from tasks.models import plugin_name; "
                            "print(plugin_name('default', 'cpu', 1, False))"],
                           cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert other == first.name
    second_uri = str(bundled_models_dir() / "default")  # the same weights under another URI: another model
    with Client(address, set_as_default=False) as client:
        cpu_addr = _wait_for_worker(client, "cpu-0")
        for name in _plugin_names(client):  # start from a cluster without dpe registrations
            client.unregister_worker_plugin(name)
        assert register_warmup(client, first, keep=1) == []
        warm = wait_for_warmup(client, first, workers=[cpu_addr])
        assert warm[cpu_addr]["error"] is None
        assert ("default", "cpu") in client.run(loaded_models, workers=[cpu_addr])[cpu_addr]
        # A second run of the same model: same registration, nothing loaded again.
        assert register_warmup(client, EnhancerWarmup("default", "cpu", 1), keep=1) == []
        assert _plugin_names(client) == [first.name]
        assert wait_for_warmup(client, first, workers=[cpu_addr])[cpu_addr]["seconds"] == warm[cpu_addr]["seconds"]
        # Another model with a cache of one: the old registration goes, and its model leaves the worker.
        second = EnhancerWarmup(second_uri, "cpu", 1)
        assert register_warmup(client, second, keep=1) == [first.name]
        assert _plugin_names(client) == [second.name]
        assert wait_for_warmup(client, second, workers=[cpu_addr])[cpu_addr]["error"] is None
        assert client.run(loaded_models, workers=[cpu_addr])[cpu_addr] == [(second_uri, "cpu")]
        client.unregister_worker_plugin(second.name)
        assert client.run(loaded_models, workers=[cpu_addr])[cpu_addr] == []


def test_worker_model_cache_keeps_the_most_recent(monkeypatch):
    from tasks import models
    from tasks.registry import bundled_models_dir

    monkeypatch.setenv("DPE_WORKER_MODELS", "1")
    other = str(bundled_models_dir() / "default")
    try:
        first = models.get_enhancer("default", "cpu", 1)
        assert models.get_enhancer("default", "cpu", 1) is first  # cached
        models.get_enhancer(other, "cpu", 1)
        assert models.loaded_models() == [(other, "cpu")]  # the least recently used one was dropped
    finally:
        models.evict_model("default")
        models.evict_model(other)


def _copy_with_other_code(root: Path) -> Path:
    """A copy of dpe's packages with one changed line: what a worker with a stale or edited install runs."""
    for package in ("dpe_core", "tasks", "flows"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "models"))
    (root / "dpe_core" / "models").symlink_to(REPO / "dpe_core" / "models")
    with open(root / "tasks" / "sharding.py", "a") as f:
        f.write("\n# a change on this worker only\n")
    return root


def test_a_worker_running_other_dpe_code_stops_the_run_before_any_work(cluster, prefect_server, tmp_path,
                                                                        monkeypatch):
    from distributed import Client

    from flows.cluster import ClusterError, dask_cluster
    from flows.params import EnhanceParams
    from tasks.enhance import EnhanceJob, Shard, enhance_shard
    from tasks.versions import dpe_version

    procs, address = cluster
    monkeypatch.setenv("DPE_VERSION_CHECK", "source")  # what users get by default (the suite compares releases)
    code = _copy_with_other_code(tmp_path / "other")
    env = procs.env | {"PYTHONPATH": str(code)}
    stale = _worker(procs, address, "stale-0", gpu=True, env=env, cwd=tmp_path)
    try:
        with Client(address, set_as_default=False) as client:
            stale_addr = _wait_for_worker(client, "stale-0")
            theirs = client.run(dpe_version, workers=[stale_addr])[stale_addr]
        assert theirs != dpe_version() and theirs.split("+")[0] == dpe_version().split("+")[0]
        params = EnhanceParams(source_url=str(tmp_path / "src"), dest_url=str(tmp_path / "dst"),
                               dask_address=address, gpu_wait_s=30)
        with pytest.raises(ClusterError) as failed:
            with dask_cluster(params):
                pass
        message = str(failed.value)
        assert f"Dask worker stale-0 ({stale_addr}) runs dpe {theirs}" in message
        assert f"this flow runs dpe {dpe_version()}" in message

        # A worker that joins after the flow's check: a shard sent to it is refused before any work.
        job = EnhanceJob(model_uri="default", dest_url=str(tmp_path / "dst"), records_url=str(tmp_path / "dst" / "r"),
                         dpe_version=dpe_version())
        with Client(address, set_as_default=False) as client:
            future = client.submit(enhance_shard.fn, Shard(index=0, items=[]), job, workers=[stale_addr], pure=False)
            with pytest.raises(Exception) as refused:
                future.result(timeout=120)
        assert f"runs dpe {theirs}, the flow runs dpe {dpe_version()}" in str(refused.value)
        assert type(refused.value).__name__ == "VersionMismatch"
        assert not (tmp_path / "dst").exists()

        # DPE_VERSION_CHECK=release (a developer editing a checkout under running workers): the same release passes.
        monkeypatch.setenv("DPE_VERSION_CHECK", "release")
        with dask_cluster(params) as (info, _):
            assert info.dpe_version == dpe_version().split("+")[0]
    finally:
        procs.stop(stale)


def _certificates(folder: Path) -> dict[str, Path]:
    """A self-signed CA and one certificate it signed for 127.0.0.1/localhost (scheduler, worker and client)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dpe test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "node.pem", "key": folder / "node-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(pem_key(key))
    paths["key"].chmod(0o600)
    return paths


def test_tls_cluster_runs_with_dask_security_and_refuses_without(worker_env, prefect_server, model_ref, testdata,
                                                                 tmp_path):
    from flows.cluster import ClusterError, dask_cluster
    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    certs = _certificates(tmp_path)
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])]
    # The flow's side: Security keywords, paths relative to the file.
    security = tmp_path / "dask-security.yaml"
    security.write_text("tls_ca_file: ca.pem\ntls_client_cert: node.pem\ntls_client_key: node-key.pem\n"
                        "require_encryption: true\n")
    procs = Processes(tmp_path, worker_env)
    try:
        _, address = _scheduler(procs, "tls-scheduler", ["--protocol", "tls", *tls])
        assert address.startswith("tls://")
        _worker(procs, address, "tls-gpu-0", gpu=True, extra=tls)
        src = make_folder(tmp_path / "src", testdata, dict(list(PHOTOS.items())[:3]))
        dst = tmp_path / "dst"

        with pytest.raises(ClusterError) as refused:  # no certificates: a clear error, no hang
            with dask_cluster(EnhanceParams(source_url=str(src), dest_url=str(dst), dask_address=address)):
                pass
        assert f"cannot connect to the Dask scheduler at {address}" in str(refused.value)
        assert "--dask-security" in str(refused.value)

        state = enhance_archive(EnhanceParams(
            source_url=str(src), dest_url=str(dst), model=model_ref, mode="paper", dask_address=address,
            dask_security=str(security), min_gpu_workers=1, gpu_wait_s=120,
            registry_url=str(tmp_path / "registry")), return_state=True)
        summary = state.result()
        assert summary["counts"] == {"ok": 3, "skipped": 0, "error": 0}
        assert outputs_exist(dst)

        # The same through a Dask config file (what DASK_CONFIG files hold).
        config = tmp_path / "dask-tls.yaml"
        config.write_text(f"distributed:\n  comm:\n    require-encryption: true\n    tls:\n"
                          f"      ca-file: {certs['ca']}\n      client:\n        cert: {certs['cert']}\n"
                          f"        key: {certs['key']}\n")
        with dask_cluster(EnhanceParams(source_url=str(src), dest_url=str(dst), dask_address=address,
                                        dask_security=str(config))) as (info, _):
            assert info.gpu_workers == 1 and info.security is not None
    finally:
        procs.stop_all()


def test_workers_keep_their_environment_when_the_spec_replaces_env(prefect_server):
    """dask-cuda's LocalCUDACluster replaces each worker's env option with CUDA_VISIBLE_DEVICES alone; the flow's
    local GPU cluster starts it inside nanny_environ, so the workers still get PREFECT_API_URL. Reproduced with the
    same kind of worker spec dask-cuda builds (a Nanny whose env holds only CUDA_VISIBLE_DEVICES)."""
    import logging

    from distributed import Client, Nanny, Scheduler, SpecCluster

    from flows.cluster import nanny_environ

    def read_env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("PREFECT_API_URL", "CUDA_VISIBLE_DEVICES", "DPE_PROBE")}

    wanted = {"PREFECT_API_URL": prefect_server.api_url, "DPE_PROBE": "kept"}
    with nanny_environ(wanted):
        cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                              workers={"gpu-0": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                                                           "env": {"CUDA_VISIBLE_DEVICES": "0"}}}},
                              silence_logs=logging.WARNING)
    try:
        with Client(cluster.scheduler_address, set_as_default=False) as client:
            seen = next(iter(client.run(read_env).values()))
    finally:
        cluster.close()
    assert seen == {"PREFECT_API_URL": prefect_server.api_url, "CUDA_VISIBLE_DEVICES": "0", "DPE_PROBE": "kept"}


def test_gpu_worker_script_starts_one_pinned_gpu_worker_per_device_keeping_the_environment(cluster, worker_env,
                                                                                             s3_endpoint):
    import signal

    from distributed import Client

    def worker_env_probe() -> dict[str, str | None]:  # local: pickled by value, the workers cannot import tests
        keys = ("PREFECT_API_URL", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL_S3", "DASK_CONFIG", "CUDA_VISIBLE_DEVICES",
                "MALLOC_TRIM_THRESHOLD_")
        return {k: os.environ.get(k) for k in keys}

    procs, address = cluster
    script = str(REPO / "deploy" / "dask" / "gpu-worker.sh")
    env = {k: v for k, v in worker_env.items() if k != "DASK_CONFIG"}  # the script's default applies
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # an activated venv
    refused = subprocess.run(["bash", script, address], env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "PREFECT_API_URL is not set" in refused.stderr
    runner = procs.start("gpu-worker-script", ["bash", script, address, "--host", "127.0.0.1", "--no-dashboard"],
                         env=env | {"CUDA_VISIBLE_DEVICES": "0,1", "DPE_WORKER_NAME": "box"})
    try:
        with Client(address, set_as_default=False) as client:
            addrs = {name: _wait_for_worker(client, name) for name in ("box-gpu-0", "box-gpu-1")}
            infos = client.scheduler_info(n_workers=-1)["workers"]
            seen = client.run(worker_env_probe, workers=list(addrs.values()))
        for device, name in enumerate(("box-gpu-0", "box-gpu-1")):
            assert infos[addrs[name]]["resources"] == {"GPU": 1}
            assert seen[addrs[name]] == {
                "PREFECT_API_URL": worker_env["PREFECT_API_URL"], "AWS_ACCESS_KEY_ID": "testing",
                "AWS_ENDPOINT_URL_S3": s3_endpoint[0], "DASK_CONFIG": str(REPO / "deploy" / "dask" / "dask.yaml"),
                "CUDA_VISIBLE_DEVICES": str(device),
                "MALLOC_TRIM_THRESHOLD_": None}  # dpe's dask.yaml reached the workers
        runner.send_signal(signal.SIGTERM)
        runner.wait(60)  # the script stops its workers and waits for them
        with Client(address, set_as_default=False) as client:
            deadline = time.monotonic() + 60
            while {i.get("name") for i in client.scheduler_info(n_workers=-1)["workers"].values()} & set(addrs):
                assert time.monotonic() < deadline, "the script's workers did not stop"
                time.sleep(0.2)
    finally:
        procs.stop(runner)


def test_cli_waits_for_gpu_workers_then_exits_2(cluster, cli_env, model_ref, testdata, tmp_path):
    from tests.conftest import dpe_command

    _, address = cluster
    src = make_folder(tmp_path / "src", testdata, {"a.jpg": "camera/canon_s40.jpg"})
    done = subprocess.run(dpe_command("enhance", str(src), str(tmp_path / "dst"), "--model", model_ref,
                                      "--dask-address", address, "--min-gpu-workers", "7", "--gpu-wait", "3", "--json"),
                          env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "waited 3 s for 7 Dask workers offering the resource GPU" in done.stderr
    assert not (tmp_path / "dst" / "a.jpg").exists()


def test_local_cluster_without_enough_gpus_stops_at_once(prefect_server):
    from flows.cluster import ClusterError, dask_cluster
    from flows.params import EnhanceParams

    started = time.monotonic()
    with pytest.raises(ClusterError) as failed:
        with dask_cluster(EnhanceParams(source_url="/nowhere/src", dest_url="/nowhere/dst", workers=1,
                                        min_gpu_workers=1)):
            pass
    assert time.monotonic() - started < 120  # not the default 600 s GPU wait
    assert "min_gpu_workers=1, but the local cluster has 0 GPU workers" in str(failed.value)
