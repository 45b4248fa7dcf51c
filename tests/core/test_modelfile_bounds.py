"""Model files are inputs too: sidecar and safetensors header validated with bounds before anything is allocated."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from dpe_core.nn import GeneratorConfig, ModelFileError, load_model, modelfile, save_model
from dpe_core.nn.generator import GlobalUNetGenerator


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_model(GlobalUNetGenerator(GeneratorConfig(train_size=64, base_channels=4)), str(folder / "m.safetensors"))
    return (folder / "m.safetensors").read_bytes(), json.loads((folder / "m.json").read_text())


def _write(tmp_path, blob: bytes, sidecar: dict, fix_hash: bool = True) -> str:
    if fix_hash:
        sidecar = sidecar | {"weights_sha256": hashlib.sha256(blob).hexdigest()}
    (tmp_path / "x.safetensors").write_bytes(blob)
    (tmp_path / "x.json").write_text(json.dumps(sidecar))
    return str(tmp_path / "x.safetensors")


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _no_tensor_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tensors were read before validation finished")

    monkeypatch.setattr(modelfile, "load_safetensors", refuse)


def test_valid_model_loads(saved, tmp_path):
    blob, sidecar = saved
    generator, info = load_model(_write(tmp_path, blob, sidecar))
    assert info.generator.base_channels == 4 and not generator.training


@pytest.mark.parametrize("hash_value", ["", None, "abc", "F" * 64])
def test_empty_missing_or_malformed_hash_is_an_error(saved, tmp_path, hash_value, monkeypatch):
    blob, sidecar = saved
    sidecar = dict(sidecar)
    if hash_value is None:
        sidecar.pop("weights_sha256")
    else:
        sidecar["weights_sha256"] = hash_value
    uri = _write(tmp_path, blob, sidecar, fix_hash=False)
    _no_tensor_reads(monkeypatch)
    with pytest.raises(ModelFileError, match=r"weights_sha256.*x\.safetensors cannot be verified and is not loaded"):
        load_model(uri)


@pytest.mark.parametrize(("field", "value"), [("train_size", 10**9), ("train_size", 2), ("base_channels", 100_000),
                                              ("global_pool", 0), ("bn_eps", float("nan")), ("bn_momentum", 7.0)])
def test_generator_bounds_checked_before_weights_are_read(saved, tmp_path, field, value, monkeypatch):
    _, sidecar = saved
    sidecar = json.loads(json.dumps(sidecar))
    sidecar["generator"][field] = value
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 64)  # never read: the sidecar is refused first
    (tmp_path / "x.json").write_text(json.dumps(sidecar | {"weights_sha256": "0" * 64}))
    monkeypatch.setattr(modelfile, "read_bytes", _guard_reads(modelfile.read_bytes))
    with pytest.raises(ModelFileError, match=rf"x\.json: generator\.{field} = .* is outside the accepted range"):
        load_model(str(tmp_path / "x.safetensors"))


def _guard_reads(real):
    def read(url, *args, **kwargs):
        if str(url).endswith(".safetensors"):
            raise AssertionError("weights read before the sidecar was validated")
        return real(url, *args, **kwargs)

    return read


def test_header_shapes_must_match_the_sidecar_before_loading(saved, tmp_path, monkeypatch):
    blob, sidecar = saved
    header, data = _split(blob)
    name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 4)
    entry = header[name]
    begin, end = entry["data_offsets"]
    # a consistent file (offsets match dtype x shape) whose tensor has another shape than the sidecar says
    entry["shape"] = [entry["shape"][0] * entry["shape"][1], 1, *entry["shape"][2:]]
    uri = _write(tmp_path, _join(header, data), sidecar)
    _no_tensor_reads(monkeypatch)
    with pytest.raises(ModelFileError, match=rf"do not fit the generator.*wrong shapes \['{name}: file"):
        load_model(uri)


@pytest.mark.parametrize("damage", ["huge_header_length", "offsets_outside", "size_mismatch", "overlap", "dtype",
                                    "too_many_parameters", "not_json"])
def test_lying_safetensors_headers_are_refused(saved, tmp_path, damage, monkeypatch):
    blob, sidecar = saved
    header, data = _split(blob)
    names = [k for k in header if k != "__metadata__"]
    first, second = header[names[0]], header[names[1]]
    if damage == "huge_header_length":
        bad = struct.pack("<Q", 1 << 40) + blob[8:]
    elif damage == "not_json":
        bad = struct.pack("<Q", 4) + b"\xff{[(" + data
    else:
        if damage == "offsets_outside":
            first["data_offsets"] = [0, 10**12]
        elif damage == "size_mismatch":
            first["shape"] = [s * 2 for s in first["shape"]] or [2]
        elif damage == "overlap":
            second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + (
                second["data_offsets"][1] - second["data_offsets"][0])]
        elif damage == "dtype":
            first["dtype"] = "PICKLE"
        elif damage == "too_many_parameters":
            first["shape"] = [100_000, 100_000]
        bad = _join(header, data)
    uri = _write(tmp_path, bad, sidecar)
    _no_tensor_reads(monkeypatch)
    with pytest.raises(ModelFileError, match=r"x\.safetensors"):
        load_model(uri)


def test_oversized_model_files_are_refused_unread(saved, tmp_path, monkeypatch):
    blob, sidecar = saved
    uri = _write(tmp_path, blob, sidecar)
    monkeypatch.setattr(modelfile, "MAX_WEIGHTS_BYTES", len(blob) - 1)
    with pytest.raises(ModelFileError, match=r"x\.safetensors: file too large: .* exceeds the input limit"):
        load_model(uri)
    monkeypatch.setattr(modelfile, "MAX_SIDECAR_BYTES", 10)
    with pytest.raises(ModelFileError, match=r"x\.json: file too large"):
        load_model(uri)


def test_model_errors_hold_no_credentials():
    err = ModelFileError("model 'https://bob:s3cr3t-pass@host/m' not found")
    assert "s3cr3t" not in str(err) and "https://***@host/m" in str(err)
