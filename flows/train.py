"""train_style: train a named style and publish it to the model registry that enhance_archive resolves.

1. (prepare_data) ingest every dataset into <work>/<name>/data/<role>: corrupt files are reported and left
   out, valid photos become small upright copies (fast to load, any source storage);
2. train on a GPU worker when the cluster offers one (Dask resource GPU=1), else on a CPU worker with all the
   machine's cores; checkpoints go to an fsspec URL and a rerun resumes from the newest one;
3. evaluate (paired: PSNR on held-out pairs; two-way: colour-statistics distance to the reference set);
4. publish <registry>/<name>/<version>/model.{safetensors,json} and add it to <registry>/index.json.

A run that stops early (stop_after, a killed process) publishes nothing; running it again resumes.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

from fsspec.core import url_to_fs
from prefect import flow, get_run_logger, task
from prefect.states import Completed

from dpe_core.io.places import artifact_key, join
from flows.artifacts import Progress, publish_summary
from flows.cluster import cpu_count, dask_cluster
from flows.ingest import copies_url, ingest_dataset
from flows.params import IngestParams, TrainParams, default_registry, dpe_home
from flows.progress import TrainingProgress, announce_run, emit
from tasks.registry import model_uri, next_version, publish, read_index
from tasks.storage import STORAGE_RETRIES
from tasks.storage_options import use_storage_block
from tasks.train import train_model

_CHECKPOINT = re.compile(r"step-(\d{8})\.json$")


def checkpoint_iterations(folder: str) -> list[int]:
    """Iterations of the complete checkpoints in a folder (their JSON sidecar exists), ascending."""
    fs, path = url_to_fs(folder)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return sorted(int(m.group(1)) for p in fs.ls(path, detail=False) if (m := _CHECKPOINT.search(p)))


def data_roles(params: TrainParams) -> dict[str, str]:
    if params.mode == "two-way":
        return {"source": params.source_url, "reference": params.reference_url}
    if params.degrade_url:
        return {"degrade": params.degrade_url}
    return {"input": params.input_url, "target": params.target_url}


def train_config(params: TrainParams, data: dict[str, str], checkpoint_url: str, threads: int | None) -> dict:
    """The TrainConfig (as a dict: the flow process does not import dpe_core.training / torch)."""
    data_cfg: dict[str, Any] = {"holdout": params.holdout} if params.mode != "two-way" else {}
    keys = {"source": "source_url", "reference": "reference_url", "input": "input_url", "target": "target_url",
            "degrade": "degrade_url"}
    data_cfg |= {keys[role]: url for role, url in data.items()}
    if "degrade" in data:
        data_cfg["degrade_strength"] = params.degrade_strength
    config: dict[str, Any] = {
        "mode": params.mode, "data": data_cfg, "image_size": params.image_size, "batch_size": params.batch_size,
        "steps": params.steps, "critic_steps_per_generator_step": params.critic_steps_per_generator_step,
        "lr": params.lr, "checkpoint_url": checkpoint_url, "checkpoint_every": params.checkpoint_every,
        "device": "auto" if params.device == "auto" else params.device,
    }
    if threads:
        config["threads"] = threads
    overrides = dict(params.overrides)
    if "data" in overrides:  # rejected by TrainParams; kept out defensively
        overrides.pop("data")
    return config | overrides


@task(name="publish-model", **STORAGE_RETRIES)
def publish_model(registry: str, name: str, version: str, info: dict, extra: dict) -> dict:
    return publish(registry, name, version, info, extra)


@task(name="plan-training", **STORAGE_RETRIES)
def plan_training(registry: str, name: str, version: str | None, checkpoint_url: str, steps: int) -> dict:
    """Version to publish, and whether a finished checkpoint is already published (nothing to do)."""
    entry = read_index(registry)["models"].get(name, {})
    done = checkpoint_iterations(checkpoint_url)
    final = join(checkpoint_url, f"step-{done[-1]:08d}.json") if done and done[-1] >= steps else None
    for v, record in entry.get("versions", {}).items():
        if final and record.get("checkpoint") == final and (version is None or version == v):
            return {"version": v, "already_published": True, "record": record}
    chosen = version or next_version(registry, name)
    if chosen in entry.get("versions", {}):
        raise ValueError(f"model {name}:{chosen} already exists in {registry}; choose another version")
    return {"version": chosen, "already_published": False, "latest_checkpoint": done[-1] if done else None}


@flow(name="train-style", description="Train a named style, checkpoint/resume, evaluate, publish to the registry.")
def train_style(params: TrainParams) -> dict[str, Any]:
    logger = get_run_logger()
    announce_run("train")
    use_storage_block(params.storage_block)
    registry = params.registry_url or default_registry()
    work = join(params.work_url or join(dpe_home(), "training"), params.name)
    checkpoints = params.checkpoint_url or join(work, "checkpoints")
    planned = plan_training(registry, params.name, params.version, checkpoints, params.steps)
    version = planned["version"]
    if planned["already_published"]:
        message = f"{params.name}:{version} is already trained to {params.steps} iterations and published"
        logger.info(message)
        return Completed(message=message, data={"name": params.name, "version": version, "published": True,
                                                 "already_published": True, "finished": True,
                                                 "uri": planned["record"]["uri"], "registry": registry})
    if planned.get("latest_checkpoint"):
        logger.info("resuming %s from the checkpoint at iteration %d", params.name, planned["latest_checkpoint"])
    done_before = planned.get("latest_checkpoint") or 0

    with dask_cluster(params) as (cluster, _client):
        data = {role: url for role, url in data_roles(params).items()}
        datasets: dict[str, Any] = {}
        if params.prepare_data:
            for role, url in list(data.items()):
                dest = join(work, "data", role)
                emit({"event": "phase", "job": "train", "text": f"preparing the {role} photos ({url})"})
                state = ingest_dataset(IngestParams(
                    source_url=url, dest_url=dest, copies=True, copy_size=max(512, params.image_size),
                    dask_address=cluster.address, device=params.device, storage_block=params.storage_block,
                    dask_security=params.dask_security, gpu_wait_s=params.gpu_wait_s,
                ), return_state=True)
                summary = state.result()
                if summary["valid"] == 0:
                    raise ValueError(f"{role} photos under {url}: none is usable ({summary['invalid']} invalid)")
                datasets[role] = {k: summary[k] for k in ("total", "valid", "invalid", "duplicates", "manifest_url")}
                data[role] = copies_url(dest)
        threads = params.torch_threads or (cpu_count() if cluster.kind == "LocalCluster" else None)
        config = train_config(params, data, checkpoints, threads)
        card = {"source_datasets": data_roles(params), "datasets": datasets, "checkpoint_url": checkpoints}
        import dask

        # Live progress: the task's events (iteration, losses, its clock) -> the CLI's bar or lines, a log line every
        # $DPE_PROGRESS_EVERY_S seconds in this run's logs, the progress artifact.
        progress_key = f"train-{uuid.uuid4().hex}"
        artifact = None
        with contextlib.suppress(Exception):  # reporting only
            artifact = Progress(f"Training {params.name}:{version} ({params.mode}, {params.steps} iterations)")
        emit({"event": "planned", "job": "train", "total": params.steps, "todo": params.steps - done_before,
              "skipped": done_before})
        with cluster.task_runner() as runner, \
                TrainingProgress(progress_key, params.steps, client=_client, artifact=artifact,
                                 log=logger.info) as live:
            annotate = dask.annotate(resources={"GPU": 1}) if cluster.use_gpu else contextlib.nullcontext()
            with annotate:
                future = runner.submit(train_model, {
                    "name": params.name, "config": config, "stop_after": params.stop_after,
                    "export_uri": model_uri(registry, params.name, version), "version": version, "card": card,
                    "storage_block": params.storage_block, "progress_key": progress_key})
            result = future.result()
            live.finished(result["iteration"])

    out: dict[str, Any] = {"name": params.name, "version": version, "registry": registry, "finished":
                           result["finished"], "iteration": result["iteration"], "steps": result["steps"],
                           "checkpoint": result["checkpoint"], "resumed_from": result["resumed_from"],
                           "metrics": result["metrics"], "seconds": result["seconds"], "datasets": datasets,
                           "device": result["device"], "published": False}
    if result["finished"] and "model_info" in result:
        record = publish_model(registry, params.name, version, result["model_info"],
                               {"checkpoint": result["checkpoint"]})
        out |= {"published": True, "uri": record["uri"]}
        message = f"published {params.name}:{version} ({result['iteration']} iterations) to {registry}"
    else:
        message = (f"stopped at iteration {result['iteration']} of {result['steps']}; checkpoint "
                   f"{result['checkpoint']}; run again to resume")
    lines = [f"# Training {params.name}:{version}", "", message, "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.5g} |" for k, v in sorted(result["metrics"].items()) if isinstance(v, int | float)]
    if result["history"]:
        keys = [k for k in result["history"][-1] if k != "iteration"][:8]
        lines += ["", "| iteration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for h in result["history"][-20:]:
            lines.append(f"| {h['iteration']} | " + " | ".join(
                f"{h[k]:.4g}" if isinstance(h.get(k), float) else str(h.get(k, "")) for k in keys) + " |")
    with contextlib.suppress(Exception):
        publish_summary("\n".join(lines), key=artifact_key("train", params.name), description=message)
    logger.info(message)
    return Completed(message=message, data=out)
