"""Model files: generator weights as safetensors plus a JSON sidecar; never unpickled.

A model URI is ``<stem>.safetensors`` (sidecar ``<stem>.json``), a folder holding ``model.safetensors`` and
``model.json``, or the name of a bundled model (``default``) found under ``dpe_core/models/<name>/``.

A model file is input like any photo: before anything is allocated, ``load_model`` bounds the sizes of both
files, requires the sidecar's sha256 of the weights (an empty or missing hash is an error, never a skipped
check), checks the generator description against sane bounds (``GENERATOR_BOUNDS``) and compares every tensor
of the safetensors header (names, dtypes, shapes, byte ranges) with the network the sidecar describes, built
on torch's ``meta`` device (no memory). Only then are the tensors read and the real network built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dpe_core.io.errors import PhotoError
from dpe_core.io.redact import redact
from dpe_core.io.storage import exists, join_url, read_bytes, write_bytes_atomic
from dpe_core.nn.config import GeneratorConfig
from dpe_core.nn.generator import GlobalUNetGenerator

MODEL_FORMAT = "dpe.generator"
MODEL_FORMAT_VERSION = 1
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"

MAX_WEIGHTS_BYTES = int(os.environ.get("DPE_MAX_MODEL_BYTES", str(1 << 30)))  # the default model: 27 MB
MAX_SIDECAR_BYTES = 4 << 20
MAX_HEADER_BYTES = 16 << 20  # safetensors JSON header (the default model's: ~20 KB)
MAX_PARAMETERS = 200_000_000  # all tensors together; the release's generator has ~3.4 M
# (low, high) for each numeric GeneratorConfig field: anything outside is refused before a layer is built.
GENERATOR_BOUNDS: dict[str, tuple[float, float]] = {
    "train_size": (16, 8192),
    "base_channels": (1, 64),  # 64: ~53 M parameters (16x the release); memory grows with its square
    "global_pool": (1, 64),
    "bn_momentum": (0.0, 1.0),
    "bn_eps": (1e-12, 1.0),
    "init_scale": (0.0, 1e3),
    "output_init_scale": (0.0, 1e3),
}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8, "I64": 8,
                "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelFileError(ValueError):
    """A model file is missing, not safetensors, or does not match its sidecar. Names the URI; never holds
    credentials (URL passwords and known secrets are masked)."""

    def __init__(self, message: str):
        super().__init__(redact(str(message)))


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
    """Rebuild the generator from the sidecar and load its weights; eval mode. Raises ModelFileError.

    Everything is validated before anything is allocated (module docstring): file sizes, the weights hash
    (required), the generator description's bounds, the safetensors header against the described network.
    """
    weights_url, sidecar_url = resolve_model_uri(uri)
    for url, what in ((weights_url, "weights"), (sidecar_url, "JSON sidecar")):
        if not exists(url, **storage_options):
            raise ModelFileError(f"model {uri!r}: {what} not found at {url}")
    try:
        info = ModelInfo.model_validate(json.loads(_read(sidecar_url, MAX_SIDECAR_BYTES, **storage_options)))
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            f"model {uri!r}: sidecar {sidecar_url} is not a valid dpe model description: {exc}"
        ) from exc
    if info.format != MODEL_FORMAT:
        raise ModelFileError(f"model {uri!r}: sidecar format {info.format!r}, expected {MODEL_FORMAT!r}")
    if not _SHA256.fullmatch(info.weights_sha256 or ""):
        what = "has no weights_sha256" if not info.weights_sha256 else f"has a malformed weights_sha256 " \
            f"{info.weights_sha256[:80]!r} (64 lower-case hex digits expected)"
        raise ModelFileError(f"model {uri!r}: sidecar {sidecar_url} {what}: {weights_url} cannot be verified "
                             "and is not loaded")
    check_generator_bounds(info.generator, f"model {uri!r}: sidecar {sidecar_url}")
    blob = _read(weights_url, MAX_WEIGHTS_BYTES, **storage_options)
    if hashlib.sha256(blob).hexdigest() != info.weights_sha256:
        raise ModelFileError(f"model {uri!r}: {weights_url} does not match the sha256 recorded in its sidecar")
    header = safetensors_header(blob, weights_url)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: tuple(v.shape) for k, v in GlobalUNetGenerator(info.generator).state_dict().items()}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    wrong = [f"{k}: file {header[k][1]} vs model {v}" for k, v in expected.items() if k in header and header[k][1] != v]
    if missing or unexpected or wrong:
        raise ModelFileError(
            f"model {uri!r}: weights in {weights_url} do not fit the generator described by its sidecar: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    state = safetensors_state(blob, weights_url)
    generator = GlobalUNetGenerator(info.generator)
    generator.load_state_dict(state)
    return generator.to(map_location).eval(), info


def check_generator_bounds(config: GeneratorConfig, where: str) -> None:
    """Refuse a generator description outside GENERATOR_BOUNDS (a hostile or damaged sidecar could otherwise
    make the loader allocate gigabytes); ``where`` names the file in the error."""
    for name, (low, high) in GENERATOR_BOUNDS.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
            raise ModelFileError(f"{where}: generator.{name} = {value!r} is outside the accepted range "
                                 f"[{low:g}, {high:g}]")


def _read(url: str, limit: int, **storage_options) -> bytes:
    try:
        return read_bytes(url, max_bytes=limit, **storage_options)
    except PhotoError as exc:  # InputTooLargeError: names the size and the limit
        raise ModelFileError(f"model file {exc}") from exc


def safetensors_header(blob: bytes, where: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors header, after checking it without reading a tensor: the
    header's size, every dtype, shape and byte range (inside the file, matching dtype x shape, no overlap), and
    the total element count (MAX_PARAMETERS). Raises ModelFileError naming ``where``."""
    _refuse_pickles(blob, where)
    (size,) = struct.unpack_from("<Q", blob, 0)
    if size > min(MAX_HEADER_BYTES, len(blob) - 8):
        raise ModelFileError(f"{where}: safetensors header of {size} bytes does not fit the file "
                             f"({len(blob)} bytes) or exceeds {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{where}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{where}: safetensors header is not a JSON object")
    data_len = len(blob) - 8 - size
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: tensor {name!r}: malformed header entry ({exc})") from exc
        if dtype not in _DTYPE_BYTES:
            raise ModelFileError(f"{where}: tensor {name!r}: unsupported dtype {dtype!r}")
        if not all(isinstance(d, int) and 0 <= d <= MAX_PARAMETERS for d in shape):
            raise ModelFileError(f"{where}: tensor {name!r}: invalid shape {list(shape)[:8]}")
        numel = math.prod(shape)
        total += numel
        if total > MAX_PARAMETERS:
            raise ModelFileError(f"{where}: more than {MAX_PARAMETERS} parameters in total; refused")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len) or \
                end - begin != numel * _DTYPE_BYTES[dtype]:
            raise ModelFileError(f"{where}: tensor {name!r}: byte range [{begin}, {end}) does not hold "
                                 f"{dtype} {list(shape)} inside the {data_len} data bytes")
        spans.append((begin, end, name))
        out[name] = (dtype, shape)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise ModelFileError(f"{where}: tensors {first!r} and {second!r} overlap")
    return out


def _refuse_pickles(blob: bytes, where: str) -> None:
    if len(blob) < 8 or blob[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or blob[:2] == b"PK":
        raise ModelFileError(
            f"{where} is not a safetensors file (pickled/zip checkpoints are refused: never unpickled)"
        )


def safetensors_state(blob: bytes, where: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; anything else (a pickle, truncated file) raises ModelFileError naming where.
    The header is checked first (``safetensors_header``), so no tensor is allocated for a lying header."""
    safetensors_header(blob, where)
    try:
        return load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{where} is not a valid safetensors file: {exc}") from exc
