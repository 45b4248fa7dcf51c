"""Model registry on storage, and the storage-only retry policy."""

from __future__ import annotations

import json

import pytest

from tasks.registry import ModelNotFound, list_models, model_uri, next_version, publish, read_index, resolve
from tasks.retry import is_transient_storage_error, with_storage_retries


def _fake_model_files(uri, name, version, sha):
    """A model folder as export_model writes it (the registry reads only the JSON sidecar)."""
    from pathlib import Path

    folder = Path(uri)
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"format": "dpe.generator", "name": name, "version": version,
                                                   "weights_sha256": sha, "training": {"mode": "two-way",
                                                                                       "iterations": 6}}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return json.loads((folder / "model.json").read_text())


def test_publish_resolve_and_list(tmp_path):
    registry = str(tmp_path / "registry")
    assert read_index(registry)["models"] == {}
    assert next_version(registry, "warm") == "1"
    for version, sha in (("1", "a" * 64), ("2", "b" * 64)):
        info = _fake_model_files(model_uri(registry, "warm", version), "warm", version, sha)
        publish(registry, "warm", version, info, {"checkpoint": f"ckpt-{version}"})
    assert next_version(registry, "warm") == "3"
    latest = resolve("warm", registry)
    assert (latest.version, latest.source, latest.uri) == ("2", "registry", model_uri(registry, "warm", "2"))
    assert latest.id == "warm:2@" + "b" * 12
    assert resolve("warm:1", registry).sha256 == "a" * 64
    with pytest.raises(ModelNotFound, match="no version '9'"):
        resolve("warm:9", registry)
    with pytest.raises(ModelNotFound, match="no model named 'cold'"):
        resolve("cold", registry)
    rows = list_models(registry)
    assert [(r["name"], r["version"], r["latest"]) for r in rows] == [("warm", "2", True), ("warm", "1", False)]
    assert rows[0]["mode"] == "two-way" and rows[0]["checkpoint"] == "ckpt-2"
    by_uri = resolve(model_uri(registry, "warm", "1"), None)
    assert (by_uri.source, by_uri.name, by_uri.version) == ("uri", "warm", "1")


def test_bundled_model_resolves_without_a_registry(tmp_path):
    ref = resolve("default", str(tmp_path / "empty-registry"))
    assert ref.source == "bundled" and ref.uri == "default" and ref.sha256 and ref.name == "default"


def test_storage_retries_retry_transient_errors_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "data"

    assert with_storage_retries(flaky, "read x", base_delay=0.01) == "data"
    assert len(calls) == 3

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_storage_retries(missing, "read y", base_delay=0.01)
    assert len(calls) == 1
    assert not is_transient_storage_error(ValueError("bad pixels"))
    assert is_transient_storage_error(TimeoutError())
