"""The Dask cluster a flow runs its tasks on: a running scheduler (``dask_address``) or a local cluster.

Local default: one worker per GPU (LocalCUDACluster when dask-cuda is installed, else one Nanny per GPU with
CUDA_VISIBLE_DEVICES pinned), each declaring the Dask resource GPU=1; without GPUs a LocalCluster of
single-threaded worker processes sized to cores and memory, torch using cores/workers threads each.

Measured pitfalls handled here (see DESIGN.md): workers cannot see Prefect's ephemeral API, so a real API URL
is required and passed to the workers' environment before they start; ``DaskTaskRunner(cluster=obj)`` is
broken in prefect-dask 0.3.7, so callers get an address for ``DaskTaskRunner(address=...)``; a resource no
worker offers makes tasks wait forever, so GPU annotation happens only when a worker offers GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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

    @property
    def use_gpu(self) -> bool:
        return self.gpu_workers > 0


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


def start_local_cluster(params: ClusterParams, api_url: str):
    """(cluster, kind, workers, gpu_workers, torch_threads) for a local cluster sized to this machine."""
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

            cluster = LocalCUDACluster(n_workers=n, threads_per_worker=1, resources={"GPU": 1}, env=env,
                                       dashboard_address=":0", silence_logs=logging.WARNING)
            return cluster, "LocalCUDACluster", n, n, threads
        except Exception as exc:  # not installed, or no usable CUDA for it
            log.info("LocalCUDACluster unavailable (%s); pinning one worker per GPU", exc)
            return _gpu_nannies(n, env), "gpu-nannies", n, n, threads
    n = params.workers or default_cpu_workers(cores, memory_gib())
    threads = params.torch_threads or max(1, cores // n)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", env=env,
                           silence_logs=logging.WARNING)
    return cluster, "LocalCluster", n, 0, threads


def worker_summary(client) -> tuple[int, int]:
    """(workers, workers offering resource GPU>=1) of a connected cluster."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu = sum(1 for w in workers.values() if (w.get("resources") or {}).get("GPU", 0) >= 1)
    return len(workers), gpu


@contextmanager
def dask_cluster(params: ClusterParams, wait_for_workers_s: float = 120.0) -> Iterator[tuple[ClusterInfo, object]]:
    """Yield (ClusterInfo, a distributed Client for management: plugins, worker checks).

    A local cluster is closed on exit; an external one is left running. Raises ClusterError when the job
    cannot run (no API URL for workers, device=cuda without GPU workers).
    """
    from distributed import Client

    api_url = prefect_api_url()
    started = time.perf_counter()
    cluster = None
    if params.dask_address:
        client = Client(params.dask_address, set_as_default=False, timeout=60)
        kind, threads = "external", params.torch_threads
        try:
            client.wait_for_workers(1, timeout=wait_for_workers_s)
        except Exception as exc:
            client.close()
            raise ClusterError(f"no Dask worker joined the scheduler at {params.dask_address} "
                               f"within {wait_for_workers_s:.0f} s") from exc
    else:
        with torch_friendly_spawn():
            cluster, kind, _, _, threads = start_local_cluster(params, api_url)
        client = Client(cluster.scheduler_address, set_as_default=False)
    try:
        workers, gpu_workers = worker_summary(client)
        if params.device == "cpu":
            gpu_workers = 0
        elif params.device == "cuda" and gpu_workers == 0:
            raise ClusterError("device=cuda but no Dask worker offers the resource GPU "
                               "(start workers with `dask worker --resources GPU=1`)")
        info = ClusterInfo(client.scheduler.address, kind, workers, gpu_workers, threads,
                           time.perf_counter() - started)
        yield info, client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
