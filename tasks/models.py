"""One Enhancer per worker process, keyed by (model URI, device); never shipped in the task graph.

``get_enhancer`` is the per-process cache the shard tasks use: least recently used models are dropped beyond
``DPE_WORKER_MODELS`` (default 2), so a worker of a cluster that lives for months does not keep every model
version it ever ran. ``EnhancerWarmup`` is a Dask WorkerPlugin the flow registers (``register_warmup``) so the
workers that will run inference (only those declaring the resource GPU when the run uses GPU workers, late
joiners included) import torch and load the model in the background; the first shard then finds it ready (or
waits for the load in progress instead of starting a second one). Its name is stable per (model, device,
threads, GPU-only): runs of one model share one registration, and registrations beyond the cache size are
removed (oldest first) together with their models. dpe_core/torch are imported lazily: importing this module
does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

PLUGIN_PREFIX = "dpe-enhancer-"
DEFAULT_WORKER_MODELS = 2

_MODELS: OrderedDict[tuple[str, str], Any] = OrderedDict()  # least recently used first
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


def worker_models_limit() -> int:
    """Models one worker process keeps loaded (DPE_WORKER_MODELS, default 2, at least 1)."""
    try:
        return max(1, int(os.environ.get("DPE_WORKER_MODELS", DEFAULT_WORKER_MODELS)))
    except ValueError:
        return DEFAULT_WORKER_MODELS


def get_enhancer(model_uri: str, device: str = "auto", threads: int | None = None, bf16: str | None = None):
    """The process's Enhancer for (model_uri, device[, bf16]); loaded on first use, then reused by every task.
    Loading a model beyond worker_models_limit() drops the least recently used one. bf16 (auto/on/off): the
    CPU bf16 setting; None: $DPE_BF16, else auto."""
    threads = threads or worker_share()
    set_torch_threads(threads)
    key: tuple[str, ...] = (model_uri, resolve_device(device)) + ((bf16,) if bf16 else ())
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _GUARD:
            enhancer = _MODELS.get(key)
            if enhancer is not None:
                _MODELS.move_to_end(key)
                return enhancer
        from dpe_core.inference import Enhancer

        log.info("loading model %s on %s (pid %d)", model_uri, key[1], os.getpid())
        enhancer = Enhancer.from_pretrained(model_uri, device=key[1], threads=threads,
                                            **({"bf16": bf16} if bf16 else {}))
        with _GUARD:
            _MODELS[key] = enhancer
            while len(_MODELS) > worker_models_limit():
                old, _ = _MODELS.popitem(last=False)
                log.info("dropped model %s on %s (cache of %d models)", old[0], old[1], worker_models_limit())
        _free_device_memory()
        return enhancer


def evict_model(model_uri: str) -> list[tuple[str, str]]:
    """Drop every loaded Enhancer of model_uri from this process; returns the keys dropped."""
    with _GUARD:
        gone = [key for key in _MODELS if key[0] == model_uri]
        for key in gone:
            del _MODELS[key]
    if gone:
        _free_device_memory()
    return gone


def _free_device_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def loaded_models() -> list[tuple[str, str]]:
    """(model URI, device) of the Enhancers this process holds, least recently used first."""
    with _GUARD:
        return [(key[0], key[1]) for key in _MODELS]


def offers_gpu(worker) -> bool:
    """Whether a Dask worker declares the resource GPU (>= 1)."""
    return (getattr(worker.state, "total_resources", None) or {}).get("GPU", 0) >= 1


class EnhancerWarmup(WorkerPlugin):
    """Worker plugin: set torch threads, load the model and warm it up (Enhancer.warm_up: first forward, compiled
    apply kernel) in a background thread when a worker starts.

    Its name is a digest of (model URI, device, threads, gpu_only, storage block, dpe version): stable across runs
    and flow processes (not Python's salted hash()), so a long-lived cluster serving many runs keeps one
    registration per model; registering it again is a no-op (``idempotent``). With
    gpu_only, workers without the resource GPU skip it (they never get a shard of that run). A worker whose dpe
    differs from the flow's (``version``) does not load anything and reports the mismatch. Errors are logged, not
    raised: the shard task loads the model itself and turns a failure into per-file records. Removing the plugin
    (``client.unregister_worker_plugin``) drops its model from the worker.
    """

    idempotent = True  # distributed: a registration under an existing name leaves the loaded one alone

    def __init__(self, model_uri: str, device: str = "auto", threads: int | None = None,
                 storage_block: str | None = None, gpu_only: bool = False, version: str | None = None,
                 bf16: str | None = None):
        self.model_uri = model_uri
        self.bf16 = bf16
        self.device = device
        self.threads = threads
        self.storage_block = storage_block  # a block *name*: credentials are loaded on the worker
        self.gpu_only = gpu_only
        self.version = version
        self.name = plugin_name(model_uri, device, threads, gpu_only, storage_block, version, bf16)

    def setup(self, worker) -> None:  # runs on the worker's event loop: do the slow part in a thread
        if self.gpu_only and not offers_gpu(worker):
            _WARMUPS[self.name] = {"done": True, "error": None, "seconds": 0.0, "skipped": "no GPU resource"}
            return
        status = _WARMUPS.setdefault(self.name, {"done": False, "error": None, "seconds": 0.0})
        if status["done"] and not status.get("skipped"):
            return
        status.pop("skipped", None)
        status["done"] = False
        if self.version:
            from tasks.versions import dpe_version, same_version

            if not same_version(self.version, dpe_version()):
                status.update(done=True, error=f"dpe version mismatch: this worker runs dpe {dpe_version()}, "
                                               f"the flow runs dpe {self.version}")
                log.error("%s: not loading model %s", status["error"], self.model_uri)
                return

        def load() -> None:
            started = time.perf_counter()
            try:
                import prefect.task_engine  # noqa: F401  (the first task would pay this import otherwise)

                from tasks.storage_options import use_storage_block

                use_storage_block(self.storage_block)
                enhancer = get_enhancer(self.model_uri, self.device, self.threads, self.bf16)
                # First forward and, on CPU, the fused apply kernel's compilation (10-40 s cold, less from
                # inductor's disk cache): here, before the flow submits shards, not on a user's photo.
                status["warm_up"] = enhancer.warm_up()
                status["device"] = str(getattr(enhancer, "device", resolve_device(self.device)))
                status["decoders_started"] = prestart_decoders(2 if status["device"].startswith("cuda") else 1)
            except Exception as exc:  # the shard task reports it per file
                log.exception("warm-up of model %s failed", self.model_uri)
                status["error"] = f"{type(exc).__name__}: {exc}"
            status["seconds"] = time.perf_counter() - started
            status["done"] = True

        threading.Thread(target=load, name="dpe-model-warmup", daemon=True).start()

    def teardown(self, worker) -> None:
        """The plugin was removed from the cluster (an old model retired): drop its model and warm-up state."""
        _WARMUPS.pop(self.name, None)
        if not any(name.startswith(PLUGIN_PREFIX) and getattr(plugin, "model_uri", None) == self.model_uri
                   for name, plugin in worker.plugins.items() if name != self.name):
            evict_model(self.model_uri)


def prestart_decoders(count: int) -> int:
    """Start the worker's decoder processes (tasks/decoder_process.py; ~0.5 s each) during warm-up rather than in
    the first shard: one per thread that decodes at once (the task's thread on CPU workers, two I/O threads on GPU
    workers). A failure here is logged only: shards start their decoders themselves."""
    from tasks.decoder_process import pool

    try:
        return pool().prestart(count)
    except Exception:
        log.exception("starting decoder processes failed")
        return 0


def plugin_name(model_uri: str, device: str = "auto", threads: int | None = None, gpu_only: bool = False,
                storage_block: str | None = None, version: str | None = None, bf16: str | None = None) -> str:
    """'dpe-enhancer-<16 hex>': the same for the same model and settings in every process and run."""
    # bf16 joins the key only when set: registrations made before it existed keep their names.
    key = json.dumps([model_uri, device, threads, gpu_only, storage_block, version] + ([bf16] if bf16 else []))
    return PLUGIN_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]


def _worker_plugin_names(dask_scheduler=None) -> list[str]:
    return [name for name in dask_scheduler.worker_plugins if name.startswith(PLUGIN_PREFIX)]


def register_warmup(client, plugin: EnhancerWarmup, keep: int | None = None) -> list[str]:
    """Register plugin (once per name: a second run of the same model reuses the registration and the loaded
    model), then unregister the oldest dpe-enhancer registrations beyond ``keep`` (default
    worker_models_limit()), which drops their models on every worker; returns the names removed."""
    keep = max(1, keep or worker_models_limit())
    client.register_plugin(plugin, name=plugin.name)
    names = client.run_on_scheduler(_worker_plugin_names)  # registration order, oldest first
    stale = [name for name in names if name != plugin.name][: max(0, len(names) - keep)]
    for name in stale:
        try:
            client.unregister_worker_plugin(name)
        except Exception as exc:  # already gone (another run removed it): nothing to do
            log.info("could not remove worker plugin %s: %s", name, exc)
    return stale


def warmup_status(name: str) -> dict[str, Any]:
    """This worker's warm-up state for a plugin name (run on every worker with client.run)."""
    return dict(_WARMUPS.get(name, {"done": False, "error": None, "seconds": 0.0}))


def wait_for_warmup(client, plugin: EnhancerWarmup, timeout_s: float = 600.0,
                    workers: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Block until the given workers (default: all; with gpu_only, pass the GPU workers) have loaded the model
    (or failed to); returns {worker: status}.

    Model loading is a start-up cost: waiting for it before submitting keeps it out of the enhance phase (no
    shard can start without the model anyway).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = client.run(warmup_status, plugin.name, workers=workers)
        if all(s["done"] for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)
