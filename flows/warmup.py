"""Model warm-up on the workers that will run inference, before any shard is submitted.

The run registers tasks.models.EnhancerWarmup under a name stable per model (a second run of the same model
finds it loaded), removes registrations of models beyond the workers' cache (their models are dropped), and
waits for the inference workers only: the GPU workers when the run uses them (CPU-only workers of a GPU cluster
never load the model), else every worker. GPU workers that join later warm up by themselves (Dask runs
registered plugins on new workers).
"""

from __future__ import annotations

import time
from typing import Any

from flows.cluster import ClusterInfo


def warm_up_inference_workers(client, cluster: ClusterInfo, model_uri: str, device: str,
                              storage_block: str | None, logger,
                              bf16: str | None = None) -> tuple[dict[str, dict[str, Any]], float]:
    """Load model_uri on the inference workers; returns ({worker: warm-up status}, seconds). Failures and GPU
    workers whose torch sees no CUDA device (they run the model on their CPU) are logged, never raised: the
    shard tasks load the model themselves and turn a failure into per-file records."""
    from tasks.models import EnhancerWarmup, register_warmup, wait_for_warmup

    plugin = EnhancerWarmup(model_uri, device, cluster.torch_threads, storage_block, gpu_only=cluster.use_gpu,
                            version=cluster.dpe_version, bf16=bf16)
    started = time.perf_counter()
    removed = register_warmup(client, plugin)
    if removed:
        logger.info("removed %d older model registrations from the cluster (their models are dropped on the "
                    "workers): %s", len(removed), ", ".join(removed))
    warm = wait_for_warmup(client, plugin, workers=cluster.gpu_addresses if cluster.use_gpu else None)
    seconds = time.perf_counter() - started
    failed = {w: s["error"] for w, s in warm.items() if s.get("error")}
    if failed:
        logger.error("model %s failed to load on %d workers: %s", model_uri, len(failed), next(iter(failed.values())))
    if cluster.use_gpu and device == "auto":
        on_cpu = sorted(w for w, s in warm.items() if s.get("device") == "cpu")
        if on_cpu:
            logger.warning("%d workers declare the resource GPU but their torch sees no CUDA device: they run the "
                           "model on their CPU (%s)", len(on_cpu), ", ".join(on_cpu))
    return warm, seconds
