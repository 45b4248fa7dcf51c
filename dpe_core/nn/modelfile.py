"""Model files: generator weights as safetensors plus a JSON sidecar; never unpickled.

A model URI is ``<stem>.safetensors`` (sidecar ``<stem>.json``), a folder holding ``model.safetensors`` and
``model.json``, or the name of a bundled model (``default``) found under ``dpe_core/models/<name>/``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dpe_core.io.storage import exists, join_url, read_bytes, write_bytes_atomic
from dpe_core.nn.config import GeneratorConfig
from dpe_core.nn.generator import GlobalUNetGenerator

MODEL_FORMAT = "dpe.generator"
MODEL_FORMAT_VERSION = 1
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"


class ModelFileError(ValueError):
    """A model file is missing, not safetensors, or does not match its sidecar. Names the URI."""


class ModelInfo(BaseModel):
    """The JSON sidecar of a model file."""

    model_config = ConfigDict(extra="allow")

    format: str = MODEL_FORMAT
    format_version: int = MODEL_FORMAT_VERSION
    name: str = "unnamed"
    version: str = "0"
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    weights_sha256: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


def resolve_model_uri(uri: str) -> tuple[str, str]:
    """(weights URL, sidecar URL) for a model URI or bundled model name."""
    uri = str(uri)
    bundled = BUNDLED_MODELS / uri
    if "/" not in uri and "\\" not in uri and bundled.is_dir():
        return str(bundled / "model.safetensors"), str(bundled / "model.json")
    if uri.endswith(".safetensors"):
        return uri, uri[: -len(".safetensors")] + ".json"
    if uri.endswith(".json"):
        return uri[: -len(".json")] + ".safetensors", uri
    return join_url(uri, "model.safetensors"), join_url(uri, "model.json")


def save_model(generator: GlobalUNetGenerator, uri: str, info: ModelInfo | None = None, **storage_options) -> ModelInfo:
    """Write generator weights (both iBN sets and running stats) and the sidecar atomically; returns the sidecar."""
    weights_url, sidecar_url = resolve_model_uri(uri)
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    blob = save_safetensors(state, metadata={"format": MODEL_FORMAT})
    info = (info or ModelInfo()).model_copy(
        update={"generator": generator.config, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    )
    write_bytes_atomic(weights_url, blob, **storage_options)
    write_bytes_atomic(sidecar_url, info.model_dump_json(indent=2).encode(), **storage_options)
    return info


def load_model(
    uri: str, map_location: str | torch.device = "cpu", **storage_options
) -> tuple[GlobalUNetGenerator, ModelInfo]:
    """Rebuild the generator from the sidecar and load its weights; eval mode. Raises ModelFileError."""
    weights_url, sidecar_url = resolve_model_uri(uri)
    for url, what in ((weights_url, "weights"), (sidecar_url, "JSON sidecar")):
        if not exists(url, **storage_options):
            raise ModelFileError(f"model {uri!r}: {what} not found at {url}")
    try:
        info = ModelInfo.model_validate(json.loads(read_bytes(sidecar_url, **storage_options)))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(
            f"model {uri!r}: sidecar {sidecar_url} is not a valid dpe model description: {exc}"
        ) from exc
    if info.format != MODEL_FORMAT:
        raise ModelFileError(f"model {uri!r}: sidecar format {info.format!r}, expected {MODEL_FORMAT!r}")
    blob = read_bytes(weights_url, **storage_options)
    if info.weights_sha256 and hashlib.sha256(blob).hexdigest() != info.weights_sha256:
        raise ModelFileError(f"model {uri!r}: {weights_url} does not match the sha256 recorded in its sidecar")
    state = safetensors_state(blob, weights_url)
    generator = GlobalUNetGenerator(info.generator)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ModelFileError(
            f"model {uri!r}: weights in {weights_url} do not fit the generator described by its sidecar: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    generator.load_state_dict(state)
    return generator.to(map_location).eval(), info


def safetensors_state(blob: bytes, where: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; anything else (a pickle, truncated file) raises ModelFileError naming where."""
    if len(blob) < 8 or blob[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or blob[:2] == b"PK":
        raise ModelFileError(
            f"{where} is not a safetensors file (pickled/zip checkpoints are refused: never unpickled)"
        )
    try:
        return load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{where} is not a valid safetensors file: {exc}") from exc
