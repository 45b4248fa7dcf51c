"""Training checkpoints: safetensors (all weights + optimizer state) + JSON sidecar (config, step, A-WGAN state).

Files in the checkpoint folder (any fsspec URL): ``step-00001234.safetensors`` then ``step-00001234.json``.
Both are written atomically and the JSON last, so a checkpoint counts only once its sidecar exists; a run
killed mid-save leaves at most an orphan weights file that is ignored and overwritten. Never unpickled.
"""

from __future__ import annotations

import json
import platform
import re
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from dpe_core.io.storage import filesystem, join_url, read_bytes, write_bytes_atomic
from dpe_core.nn.modelfile import safetensors_state
from dpe_core.training.steps import GANStep

CHECKPOINT_FORMAT = "dpe.checkpoint"
_NAME = re.compile(r"step-(\d{8})\.json$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the run it should resume."""


def _optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors: dict[str, torch.Tensor] = {}
    state = opt.state_dict()
    for index, per_param in state["state"].items():
        for field, value in per_param.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{name}.{index}.{field}"] = tensor.detach().contiguous().cpu()
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def checkpoint_urls(folder: str, iteration: int) -> tuple[str, str]:
    stem = join_url(folder, f"step-{iteration:08d}")
    return stem + ".safetensors", stem + ".json"


def save_checkpoint(
    step: GANStep, folder: str, extra: dict[str, Any] | None = None, keep: int | None = None, **storage_options
) -> str:
    """Save everything needed to resume bit-exactly; returns the sidecar URL. Keeps the newest `keep`."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in step.modules().items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    groups = {}
    for name, opt in step.optimizers().items():
        opt_tensors, groups[name] = _optimizer_tensors(name, opt)
        tensors |= opt_tensors
    import dpe_core  # local: version string only

    sidecar = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "iteration": step.iteration,
        "mode": step.config.mode,
        "config": step.config.model_dump(mode="json"),
        "lambdas": {k: v.state_dict() for k, v in step.lambdas.items()},
        "optimizer_param_groups": groups,
        "versions": {"dpe": dpe_core.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "extra": extra or {},
    }
    weights_url, sidecar_url = checkpoint_urls(folder, step.iteration)
    write_bytes_atomic(
        weights_url, save_safetensors(tensors, metadata={"format": CHECKPOINT_FORMAT}), **storage_options
    )
    write_bytes_atomic(sidecar_url, json.dumps(sidecar, indent=2).encode(), **storage_options)
    if keep is not None:
        prune_checkpoints(folder, keep, **storage_options)
    return sidecar_url


def list_checkpoints(folder: str, **storage_options) -> list[int]:
    """Iterations of the complete checkpoints (sidecar present) in folder, ascending."""
    fs, path = filesystem(folder, **storage_options)
    if not fs.exists(path):
        return []
    found = []
    for entry in fs.ls(path, detail=False):
        match = _NAME.search(entry)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def latest_checkpoint(folder: str, **storage_options) -> str | None:
    """Sidecar URL of the newest complete checkpoint in folder, or None."""
    found = list_checkpoints(folder, **storage_options)
    return checkpoint_urls(folder, found[-1])[1] if found else None


def prune_checkpoints(folder: str, keep: int, **storage_options) -> None:
    fs, _ = filesystem(folder, **storage_options)
    for iteration in list_checkpoints(folder, **storage_options)[:-keep]:
        for url in reversed(checkpoint_urls(folder, iteration)):  # sidecar first: the checkpoint stops counting
            _, path = filesystem(url, **storage_options)
            if fs.exists(path):
                fs.rm(path)


def read_checkpoint(sidecar_url: str, **storage_options) -> tuple[dict, dict[str, torch.Tensor]]:
    """(sidecar dict, tensors) of a checkpoint; raises CheckpointError on anything unreadable."""
    try:
        sidecar = json.loads(read_bytes(sidecar_url, **storage_options))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar_url} unreadable: {exc}") from exc
    if sidecar.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{sidecar_url} is not a dpe checkpoint (format {sidecar.get('format')!r})")
    weights_url = sidecar_url[: -len(".json")] + ".safetensors"
    return sidecar, safetensors_state(read_bytes(weights_url, **storage_options), weights_url)


def load_checkpoint(step: GANStep, sidecar_url: str, **storage_options) -> dict:
    """Restore modules, optimizers, A-WGAN state and the iteration counter into `step`; returns the sidecar."""
    sidecar, tensors = read_checkpoint(sidecar_url, **storage_options)
    if sidecar["mode"] != step.config.mode:
        raise CheckpointError(f"{sidecar_url} holds a {sidecar['mode']} run, cannot resume a {step.config.mode} run")
    for name, module in step.modules().items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{sidecar_url}: weights of {name} do not fit this run's network: {exc}") from exc
    for name, opt in step.optimizers().items():
        groups = sidecar["optimizer_param_groups"][name]
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(f"{name}."):
                _, index, field = key.split(".", 2)
                per_param.setdefault(int(index), {})[field] = value.to(step.device) if field != "step" else value
        for group in groups:
            group["betas"] = tuple(group["betas"])
        opt.load_state_dict({"state": per_param, "param_groups": groups})
    for name, lam in step.lambdas.items():
        lam.load_state_dict(sidecar["lambdas"][name])
    step.iteration = int(sidecar["iteration"])
    return sidecar
