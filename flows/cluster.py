"""The Dask cluster a flow runs its tasks on: a running scheduler (``dask_address``) or a local cluster.

Local default: one worker per GPU (LocalCUDACluster when dask-cuda is installed, else one Nanny per GPU with
CUDA_VISIBLE_DEVICES pinned), each declaring the Dask resource GPU=1; without GPUs a LocalCluster of
single-threaded worker processes sized to cores and memory, torch using cores/workers threads each.

Measured pitfalls handled here (see DESIGN.md): workers cannot see Prefect's ephemeral API, so a real API URL
is required and passed to the workers' environment before they start; ``DaskTaskRunner(cluster=obj)`` is
broken in prefect-dask 0.3.7, so callers get an address for ``DaskTaskRunner(address=...)``; a resource no
worker offers makes tasks wait forever, so GPU annotation happens only when a worker offers GPU.

A running cluster that lives for months (``dask_address``): the flow connects (with ``dask_security`` for
``tls://`` schedulers, flows/dask_security.py), waits for ``min_gpu_workers`` workers declaring the resource GPU
(GPU workers that join late are waited for; a timeout is a ClusterError, never a silent CPU run), and checks that
every worker runs the flow's dpe (tasks/versions.py) before any work.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flows.params import ClusterParams

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The cluster cannot run this job (no Prefect API for the workers, no GPU worker for device=cuda...)."""


@dataclass
class ClusterInfo:
    address: str
    kind: str  # LocalCluster | LocalCUDACluster | gpu-nannies | external
    workers: int
    gpu_workers: int
    torch_threads: int | None
    start_s: float
    gpu_addresses: list[str] = field(default_factory=list)  # the workers that run inference when use_gpu
    security: Any = None  # distributed.Security for tls:// schedulers (None: dask's configuration)
    dpe_version: str | None = None  # what every worker must run (checked; None: DPE_VERSION_CHECK=off)
    gpu_wait_s: float = 0.0  # how long the flow waited for GPU workers
    spare_cores: int = 0  # cores of each CPU worker that torch leaves to decoding/encoding beside the model

    @property
    def use_gpu(self) -> bool:
        return self.gpu_workers > 0

    @property
    def inference_workers(self) -> int:
        """Workers that take inference shards: the GPU workers when the run uses them, else all."""
        return self.gpu_workers if self.use_gpu else self.workers

    def task_runner(self):
        """A prefect-dask DaskTaskRunner on this cluster (address=..., never cluster=...: DESIGN.md), with its
        TLS security when the cluster needs one."""
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=self.address,
                              client_kwargs={"security": self.security} if self.security is not None else None)


def prefect_api_url() -> str:
    """The Prefect API URL Dask workers will report to; raises ClusterError when only the ephemeral API exists."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ClusterError(
            "Dask worker processes need a Prefect API server they can reach, and none is configured (Prefect's "
            "temporary in-process API is invisible to them). Use the `dpe` CLI (it starts one), run `dpe server`, "
            "or set PREFECT_API_URL before starting the flow.")
    return url


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def detect_gpus() -> int:
    """Visible NVIDIA GPUs, without importing torch (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def default_cpu_workers(cores: int, mem_gib: float) -> int:
    """Single-threaded worker processes: one per core, at most one per 3 GiB of memory (model + a 50 MP photo)."""
    return max(1, min(cores, int(mem_gib // 3)))


def _worker_env(api_url: str) -> dict[str, str]:
    env = {"PREFECT_API_URL": api_url}
    for key in ("PREFECT_API_KEY", "PREFECT_HOME", "PREFECT_PROFILE"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


DASK_TRIM_DEFAULT = "65536"


@contextmanager
def torch_friendly_spawn() -> Iterator[None]:
    """Start local worker processes without distributed's MALLOC_TRIM_THRESHOLD_=65536 and without its
    statistical profiler.

    Setting it disables glibc's dynamic mmap threshold, so every tensor buffer torch frees goes back to the OS
    and the next one is page-faulted in again: measured here, the Enhancer ran 1.6x slower in such a process
    (2.1 s -> 3.3 s for 46 photos at the working size). distributed also leaks the variable into the process
    that starts a nanny (this one), so a copy with its default value is removed too.

    The worker profiler samples every thread's stack every 10 ms and keeps an hour of per-second profiles: in a
    soak of small photos it was most of a worker's memory growth (tracemalloc: 16 of 19 MB of Python memory added
    per 1,000 photos; benchmarks/soak.py). Workers get the nanny's dask config, so it is switched off here.
    """
    import dask

    leaked = os.environ.get("MALLOC_TRIM_THRESHOLD_") == DASK_TRIM_DEFAULT
    if leaked:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_")
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                              "distributed.worker.profile.enabled": False}):
            yield
    finally:
        if leaked:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = DASK_TRIM_DEFAULT


@contextmanager
def nanny_environ(env: dict[str, str]) -> Iterator[None]:
    """Give every nanny started inside this block ``env`` through dask's ``distributed.nanny.environ``.

    dask-cuda's LocalCUDACluster replaces each worker's ``env`` option with CUDA_VISIBLE_DEVICES alone (26.10,
    ``new_worker_spec``), so an env passed to it never reaches the workers (no PREFECT_API_URL: every task tries
    to start its own API and times out). Nannies merge this configuration into their workers' environment
    whatever their ``env`` option says."""
    import dask

    with dask.config.set({"distributed.nanny.environ": dict(env)}):
        yield


def _gpu_nannies(n: int, env: dict[str, str]):
    """One Nanny per GPU, CUDA_VISIBLE_DEVICES pinned, resources GPU=1 (LocalCUDACluster without dask-cuda)."""
    from distributed import Nanny, Scheduler, SpecCluster

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(n)]
    workers = {
        f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                               "env": env | {"CUDA_VISIBLE_DEVICES": ids[i]}}}
        for i in range(n)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING, name="dpe-gpu")


def cpu_worker_threads(cores_per_worker: int, requested: int | None) -> tuple[int, int]:
    """(torch threads, spare cores) of a CPU worker with this many cores: torch gets all but one core, which
    decodes and encodes beside the model (one worker's shard on 2 cores, in-process probe: 0.80-0.94x the bare
    loop with torch on both cores, 1.07-1.25x with one torch thread and the codecs beside it; README
    "Performance"). A requested thread count is kept as given."""
    share = max(1, cores_per_worker)
    threads = requested or (share - 1 if share >= 2 else 1)
    return threads, max(0, share - threads)


def start_local_cluster(params: ClusterParams, api_url: str):
    """(cluster, kind, workers, gpu_workers, torch_threads, spare_cores) for a local cluster sized to this
    machine."""
    from distributed import LocalCluster

    cores, env = cpu_count(), _worker_env(api_url)
    gpus = detect_gpus() if params.device != "cpu" else 0
    if params.device == "cuda" and gpus == 0:
        raise ClusterError("device=cuda but this machine shows no NVIDIA GPU (nvidia-smi / CUDA_VISIBLE_DEVICES)")
    if gpus:
        n = min(params.workers or gpus, gpus)
        threads = params.torch_threads or max(1, cores // n)
        try:
            from dask_cuda import LocalCUDACluster

            with nanny_environ(env):  # LocalCUDACluster drops its env= option (see nanny_environ)
                cluster = LocalCUDACluster(n_workers=n, threads_per_worker=1, resources={"GPU": 1}, env=env,
                                           dashboard_address=":0", silence_logs=logging.WARNING)
            return cluster, "LocalCUDACluster", n, n, threads, 0
        except Exception as exc:  # not installed, or no usable CUDA for it
            log.info("LocalCUDACluster unavailable (%s); pinning one worker per GPU", exc)
            return _gpu_nannies(n, env), "gpu-nannies", n, n, threads, 0
    n = params.workers or default_cpu_workers(cores, memory_gib())
    threads, spare = cpu_worker_threads(cores // n, params.torch_threads)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", env=env,
                           silence_logs=logging.WARNING)
    return cluster, "LocalCluster", n, 0, threads, spare


def gpu_worker_names(client, workers: dict[str, Any] | None = None) -> dict[str, str]:
    """{address: name} of the workers declaring the resource GPU >= 1."""
    workers = workers if workers is not None else client.scheduler_info(n_workers=-1)["workers"]
    return {addr: str(w.get("name", addr)) for addr, w in workers.items()
            if (w.get("resources") or {}).get("GPU", 0) >= 1}


def min_gpu_workers(params: ClusterParams) -> int:
    """GPU workers a run waits for before planning its shards: params.min_gpu_workers when set, else dask's
    configuration ``dpe.min-gpu-workers`` (set once for a GPU cluster: DASK_CONFIG file or the environment
    variable DASK_DPE__MIN_GPU_WORKERS), else 0 (no wait: device=cuda then stops at once when no worker offers
    GPU). device=cpu: 0."""
    import dask

    if params.device == "cpu":
        return 0
    wanted = getattr(params, "min_gpu_workers", None)
    if wanted is None:
        wanted = int(dask.config.get("dpe.min-gpu-workers", 0) or 0)
    return max(0, wanted)


def wait_for_gpu_workers(client, count: int, timeout_s: float, poll_s: float = 0.5,
                         on_wait=None) -> dict[str, str]:
    """Block until ``count`` workers declare the resource GPU; returns {address: name} of all GPU workers then.

    Raises ClusterError naming the scheduler, how many joined and what to do, after timeout_s."""
    started = time.monotonic()
    announced = False
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpus = gpu_worker_names(client, workers)
        if len(gpus) >= count:
            return gpus
        waited = time.monotonic() - started
        if waited >= timeout_s:
            joined = ", ".join(sorted(gpus.values())) or "none"
            raise ClusterError(
                f"waited {timeout_s:.0f} s for {count} Dask workers offering the resource GPU at "
                f"{client.scheduler.address}: {len(gpus)} joined ({joined}), {len(workers)} workers in all. Start GPU "
                "workers with `dask worker ADDRESS --resources GPU=1` (deploy/dask/gpu-worker.sh), or lower "
                "min_gpu_workers / raise gpu_wait_s.")
        if not announced and on_wait is not None:
            on_wait(f"waiting up to {timeout_s:.0f} s for {count} GPU workers at {client.scheduler.address} "
                    f"({len(gpus)} so far, {len(workers)} workers in all)")
            announced = True
        time.sleep(poll_s)


def check_versions(client, workers: list[str] | None = None) -> str | None:
    """The dpe version the run requires (tasks.versions.expected_version: None when DPE_VERSION_CHECK=off) after
    checking that every worker (or the given ones) runs it; raises ClusterError naming the first worker that does
    not, with both versions."""
    from tasks.versions import dpe_version, expected_version, same_version

    mine = expected_version()
    if mine is None:
        return None
    theirs = client.run(dpe_version, workers=workers, on_error="return")
    names = {addr: str(w.get("name", addr)) for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    for addr, version in sorted(theirs.items()):
        if isinstance(version, str) and same_version(mine, version):
            continue
        said = (f"cannot tell its dpe version ({type(version).__name__}: {version}; is dpe installed there?)"
                if isinstance(version, BaseException) else f"runs dpe {version}")
        raise ClusterError(f"Dask worker {names.get(addr, addr)} ({addr}) {said}, but this flow runs dpe {mine}: "
                           "install the same dpe (same release and code) on the flow runner and every worker, "
                           "then restart the workers.")
    return mine


def _flow_logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow run
        return log


@contextmanager
def dask_cluster(params: ClusterParams, wait_for_workers_s: float = 120.0) -> Iterator[tuple[ClusterInfo, object]]:
    """Yield (ClusterInfo, a distributed Client for management: plugins, worker checks).

    A local cluster is closed on exit; an external one is left running. Before yielding: waits for
    min_gpu_workers(params) GPU workers (up to params.gpu_wait_s) and checks every worker's dpe version. Raises
    ClusterError when the job cannot run (no API URL for workers, no GPU workers in time, device=cuda without GPU
    workers, another dpe on a worker, a scheduler that cannot be reached).
    """
    from distributed import Client

    from flows.dask_security import SecurityFileError, load_security

    api_url = prefect_api_url()
    started = time.perf_counter()
    cluster = None
    security = None
    logger = _flow_logger()
    need_gpus = min_gpu_workers(params)
    if params.dask_address:
        try:
            security = load_security(getattr(params, "dask_security", None))
        except SecurityFileError as exc:
            raise ClusterError(str(exc)) from exc
        try:
            client = Client(params.dask_address, set_as_default=False, timeout=60,
                            **({"security": security} if security is not None else {}))
        except Exception as exc:
            hint = (" (a tls:// scheduler needs its CA and a client certificate: --dask-security FILE or a "
                    "DASK_CONFIG with distributed.comm.tls)" if params.dask_address.startswith("tls://") else "")
            raise ClusterError(f"cannot connect to the Dask scheduler at {params.dask_address}: "
                               f"{type(exc).__name__}: {exc}{hint}") from exc
        kind, threads, spare = "external", params.torch_threads, 0
        try:
            client.wait_for_workers(1, timeout=wait_for_workers_s)
        except Exception as exc:
            client.close()
            raise ClusterError(f"no Dask worker joined the scheduler at {params.dask_address} "
                               f"within {wait_for_workers_s:.0f} s") from exc
    else:
        with torch_friendly_spawn():
            cluster, kind, _, _, threads, spare = start_local_cluster(params, api_url)
        client = Client(cluster.scheduler_address, set_as_default=False)
    try:
        waited = time.perf_counter()
        if need_gpus and cluster is not None:  # a local cluster has all its workers already: nothing to wait for
            gpus = gpu_worker_names(client)
            if len(gpus) < need_gpus:
                raise ClusterError(f"min_gpu_workers={need_gpus}, but the local cluster has {len(gpus)} GPU workers "
                                   "(one per GPU this machine shows)")
        elif need_gpus:
            gpus = wait_for_gpu_workers(client, need_gpus, float(getattr(params, "gpu_wait_s", 600.0)),
                                        on_wait=logger.warning)
        else:
            gpus = gpu_worker_names(client)
        waited = time.perf_counter() - waited
        if params.device == "cpu":
            gpus = {}
        elif params.device == "cuda" and not gpus:
            raise ClusterError("device=cuda but no Dask worker offers the resource GPU "
                               "(start workers with `dask worker --resources GPU=1`, or set min_gpu_workers "
                               "to wait for them)")
        elif not gpus and params.dask_address:
            logger.warning("no Dask worker declares the resource GPU: device=auto runs on the CPU workers (set "
                           "min_gpu_workers, or dpe.min-gpu-workers in the flow's dask config, to wait for GPU "
                           "workers instead)")
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        version = check_versions(client)
        info = ClusterInfo(client.scheduler.address, kind, workers, len(gpus), threads,
                           time.perf_counter() - started, gpu_addresses=sorted(gpus), security=security,
                           dpe_version=version, gpu_wait_s=waited, spare_cores=spare)
        yield info, client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
