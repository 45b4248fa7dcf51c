"""Model registry on fsspec storage.

Layout: ``<registry>/index.json`` + ``<registry>/<name>/<version>/model.{safetensors,json}``.

The index maps style names to versions (URI, creation time, training summary, metrics, weights sha256) and a
``latest`` pointer. Model references: ``name`` (latest), ``name:version``, a bundled model name
(``default``), or a model URI (folder holding model.safetensors + model.json, or a ``.safetensors`` file).
Plain Python without torch: the flow process resolves names; workers load the resolved URI.
Writers: one publisher at a time per registry (the index is rewritten atomically, last writer wins).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpe_core.io.places import join
from tasks.jsonl import dumps_json, now_iso, read_json

INDEX = "index.json"
FORMAT = "dpe.registry"


class ModelNotFound(LookupError):
    """A model reference that names nothing in the registry, nothing bundled, and no model file."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the URI workers load, and a stable identity (recorded with every output)."""

    reference: str
    uri: str
    name: str
    version: str
    sha256: str
    source: str  # registry | bundled | uri

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}@{self.sha256[:12] or 'unknown'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"id": self.id}


def _is_uri(reference: str) -> bool:
    return "://" in reference or "/" in reference or "\\" in reference or reference.endswith((".safetensors", ".json"))


def bundled_models_dir() -> Path:
    import dpe_core  # the package's __init__ only: no torch

    return Path(dpe_core.__file__).resolve().parent / "models"


def sidecar_url(uri: str) -> str:
    """The JSON sidecar of a model URI (mirrors dpe_core.nn.modelfile.resolve_model_uri)."""
    if uri.endswith(".safetensors"):
        return uri[: -len(".safetensors")] + ".json"
    if uri.endswith(".json"):
        return uri
    return join(uri, "model.json")


def read_index(registry_url: str) -> dict[str, Any]:
    index = read_json(join(registry_url, INDEX))
    if index is None:
        return {"format": FORMAT, "format_version": 1, "models": {}}
    if index.get("format") != FORMAT:
        raise ValueError(f"{join(registry_url, INDEX)} is not a dpe model registry index")
    return index


def resolve(reference: str, registry_url: str | None) -> ModelRef:
    """Resolve a model reference: registry name first, then bundled name, then URI. Raises ModelNotFound."""
    reference = reference.strip()
    if not _is_uri(reference):
        name, _, version = reference.partition(":")
        if registry_url:
            entry = read_index(registry_url)["models"].get(name)
            if entry:
                version = version or entry["latest"]
                found = entry["versions"].get(version)
                if not found:
                    raise ModelNotFound(f"model {name!r} has no version {version!r} in {registry_url} "
                                        f"(versions: {', '.join(sorted(entry['versions']))})")
                return ModelRef(reference, found["uri"], name, version, found.get("weights_sha256", ""), "registry")
        folder = bundled_models_dir() / name
        if not version and (folder / "model.json").is_file():
            info = read_json(str(folder / "model.json")) or {}
            return ModelRef(reference, name, info.get("name", name), str(info.get("version", "0")),
                            info.get("weights_sha256", ""), "bundled")
        where = f"the registry {registry_url} or " if registry_url else ""
        raise ModelNotFound(f"no model named {reference!r} in {where}the bundled models")
    try:
        info = read_json(sidecar_url(reference))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"model {reference!r}: cannot read {sidecar_url(reference)}: {exc}") from exc
    if info is None:
        raise ModelNotFound(f"model {reference!r}: no sidecar at {sidecar_url(reference)}")
    return ModelRef(reference, reference, str(info.get("name", "unnamed")), str(info.get("version", "0")),
                    str(info.get("weights_sha256", "")), "uri")


def next_version(registry_url: str, name: str) -> str:
    """1 + the largest integer version of name (non-integer versions are ignored); '1' for a new name."""
    entry = read_index(registry_url)["models"].get(name, {})
    numbers = [int(v) for v in entry.get("versions", {}) if re.fullmatch(r"\d+", v)]
    return str(max(numbers, default=0) + 1)


def model_uri(registry_url: str, name: str, version: str) -> str:
    return join(registry_url, name, version)


def publish(registry_url: str, name: str, version: str, info: dict[str, Any], extra: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    """Add name:version (its files already written at model_uri) to the index and make it latest."""
    index = read_index(registry_url)
    entry = index["models"].setdefault(name, {"versions": {}, "latest": version})
    record = {
        "uri": model_uri(registry_url, name, version),
        "published": now_iso(),
        "created": info.get("created"),
        "weights_sha256": info.get("weights_sha256", ""),
        "mode": (info.get("training") or {}).get("mode"),
        "iterations": (info.get("training") or {}).get("iterations"),
        "metrics": info.get("metrics", {}),
    } | (extra or {})
    entry["versions"][version] = record
    entry["latest"] = version
    index["updated"] = record["published"]
    from dpe_core.io.storage import write_bytes_atomic

    write_bytes_atomic(join(registry_url, INDEX), dumps_json(index))
    return record


def bundled_models() -> list[dict[str, Any]]:
    """One row per model shipped inside dpe_core/models: name, version, mode, iterations, what it was trained
    for (``look`` for style models), its held-out scores as recorded in its sidecar, and its card file."""
    folder = bundled_models_dir()
    rows = []
    for sidecar in sorted(folder.glob("*/model.json")) if folder.is_dir() else []:
        info = read_json(str(sidecar))
        training = info.get("training") or {}
        card = sidecar.parent / "MODEL_CARD.md"
        rows.append({
            "name": sidecar.parent.name, "version": str(info.get("version", "")), "mode": training.get("mode"),
            "iterations": training.get("iterations"), "look": info.get("look") or training.get("look"),
            "scores": info.get("test_scores") or training.get("test_scores") or {},
            "card": str(card) if card.is_file() else None,
        })
    return rows


def list_models(registry_url: str) -> list[dict[str, Any]]:
    """One row per published version, newest first within each name."""
    rows = []
    for name, entry in sorted(read_index(registry_url)["models"].items()):
        def order(kv: tuple[str, dict]) -> tuple:
            return kv[1].get("published", ""), int(kv[0]) if kv[0].isdigit() else -1, kv[0]

        for version, record in sorted(entry["versions"].items(), key=order, reverse=True):
            rows.append({"name": name, "version": version, "latest": version == entry["latest"]} | record)
    return rows
