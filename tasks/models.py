"""One Enhancer per worker process, keyed by (model URI, device); never shipped in the task graph.

``get_enhancer`` is the per-process cache the shard tasks use. ``EnhancerWarmup`` is a Dask WorkerPlugin the
flow registers (``client.register_plugin``) so every worker imports torch and loads the model in the
background while the flow is still planning; the first shard then finds it ready (or waits for the load in
progress instead of starting a second one). dpe_core/torch are imported lazily: importing this module does
not import torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], Any] = {}
_WARMUPS: dict[str, dict[str, Any]] = {}  # plugin name -> {"done": bool, "error": str | None, "seconds": float}
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_GUARD = threading.Lock()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when this process sees a GPU, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads for the *calling* thread: OpenMP keeps the thread count per thread, so a value
    set in the warm-up thread does not reach the Dask executor thread that runs the task (whose nanny set
    OMP_NUM_THREADS=1). Called by every get_enhancer() call, in the thread that will compute."""
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def worker_share() -> int | None:
    """CPU threads of this Dask worker: its nthreads, capped by the cores the process may use; None outside one.

    Several workers on one machine each declare their share; torch's default (every core) in each would make
    their threads wait for one another at every parallel region."""
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return None
    from dpe_core.threads import available_cpus

    return max(1, min(available_cpus(), int(nthreads)))


def get_enhancer(model_uri: str, device: str = "auto", threads: int | None = None):
    """The process's Enhancer for (model_uri, device); loaded on first use, then reused by every task."""
    threads = threads or worker_share()
    set_torch_threads(threads)
    key = (model_uri, resolve_device(device))
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _MODELS:
            from dpe_core.inference import Enhancer

            log.info("loading model %s on %s (pid %d)", model_uri, key[1], os.getpid())
            _MODELS[key] = Enhancer.from_pretrained(model_uri, device=key[1], threads=threads)
        return _MODELS[key]


def loaded_models() -> list[tuple[str, str]]:
    return list(_MODELS)


class EnhancerWarmup(WorkerPlugin):
    """Worker plugin: set torch threads, load the model and warm it up (Enhancer.warm_up: first forward, compiled
    apply kernel) in a background thread when a worker starts.

    Registered per run with a name derived from the model and device, so a long-lived cluster serving several
    runs keeps one plugin (and one loaded model) per model. Errors are logged, not raised: the shard task
    loads the model itself and turns a failure into per-file records.
    """

    def __init__(self, model_uri: str, device: str = "auto", threads: int | None = None,
                 storage_block: str | None = None):
        self.model_uri = model_uri
        self.device = device
        self.threads = threads
        self.storage_block = storage_block  # a block *name*: credentials are loaded on the worker
        self.name = f"dpe-enhancer-{abs(hash((model_uri, device, threads))):x}"

    def setup(self, worker) -> None:  # runs on the worker's event loop: do the slow part in a thread
        status = _WARMUPS.setdefault(self.name, {"done": False, "error": None, "seconds": 0.0})
        if status["done"]:
            return

        def load() -> None:
            started = time.perf_counter()
            try:
                import prefect.task_engine  # noqa: F401  (the first task would pay this import otherwise)

                from tasks.storage_options import use_storage_block

                use_storage_block(self.storage_block)
                enhancer = get_enhancer(self.model_uri, self.device, self.threads)
                # First forward and, on CPU, the fused apply kernel's compilation (10-40 s cold, less from
                # inductor's disk cache): here, before the flow submits shards, not on a user's photo.
                status["warm_up"] = enhancer.warm_up()
            except Exception as exc:  # the shard task reports it per file
                log.exception("warm-up of model %s failed", self.model_uri)
                status["error"] = f"{type(exc).__name__}: {exc}"
            status["seconds"] = time.perf_counter() - started
            status["done"] = True

        threading.Thread(target=load, name="dpe-model-warmup", daemon=True).start()


def warmup_status(name: str) -> dict[str, Any]:
    """This worker's warm-up state for a plugin name (run on every worker with client.run)."""
    return dict(_WARMUPS.get(name, {"done": False, "error": None, "seconds": 0.0}))


def wait_for_warmup(client, plugin: EnhancerWarmup, timeout_s: float = 600.0) -> dict[str, dict[str, Any]]:
    """Block until every worker has loaded the model (or failed to); returns {worker: status}.

    Model loading is a start-up cost: waiting for it before submitting keeps it out of the enhance phase (no
    shard can start without the model anyway).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = client.run(warmup_status, plugin.name)
        if all(s["done"] for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)
