"""Credentials never land in files or messages: recognisable fake secrets are planted where credentials live
(environment, a Prefect Secret block, training storage_options) and every output a run produced is searched
for them: checkpoints, the exported model.json, destination files (outputs, manifest, reports), captured logs,
CLI output, the flow run's logs and artifacts on the Prefect server, error texts."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, dpe_command
from tests.tasks.helpers import make_folder

FAKE = {
    "env_secret": "FAKE-ENV-SECRET-7d1c9a0b3e5f",
    "env_token": "FAKE-ENV-SESSION-TOKEN-41b8e2",
    "block_key": "AKIAFAKEBLOCKKEY8842",
    "block_secret": "FAKE-BLOCK-SECRET-c0ffee11",
    "option_key": "AKIAFAKEOPTIONKEY731",
    "option_secret": "FAKE-OPTION-SECRET-d00dfeed",
    "option_token": "FAKE-OPTION-TOKEN-5a5a5a5a",
    "url_password": "FAKE-URL-PASSWORD-93ab",
}


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return [name for name, value in FAKE.items() if value in text]


def _files_with_secrets(*roots: Path) -> dict[str, list[str]]:
    found = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            leaks = _leaks(path.read_bytes())
            if leaks:
                found[str(path)] = leaks
    return found


def test_training_checkpoints_and_model_json_hold_no_storage_options(testdata, tmp_path, caplog):
    from dpe_core.io.redact import redact
    from dpe_core.training import DataConfig, TrainConfig, export_model, train

    sources = ["camera/iphone4s_gps.jpg", "camera/canon_s40.jpg", "camera/nokia_n70_iptc.jpg",
               "camera/nikon_d100_icc_xmp.jpg"]
    photos = make_folder(tmp_path / "photos", testdata, {f"p{i}.jpg": src for i, src in enumerate(sources)})
    options = {"key": FAKE["option_key"], "secret": FAKE["option_secret"], "token": FAKE["option_token"]}
    config = TrainConfig(mode="supervised", steps=2, image_size=32, batch_size=2, checkpoint_url=str(tmp_path / "ckpt"),
                         checkpoint_every=1, log_every=1, eval_every=1,
                         data=DataConfig(degrade_url=str(photos), holdout=1, storage_options=options))
    caplog.set_level(logging.DEBUG)
    result = train(config)
    info = export_model(result, str(tmp_path / "model"), name="secret-test", version="1")
    assert (tmp_path / "model" / "model.json").is_file() and list((tmp_path / "ckpt").iterdir())
    assert _files_with_secrets(tmp_path / "ckpt", tmp_path / "model") == {}
    assert not _leaks(caplog.text)
    assert not _leaks(repr(config)) and not _leaks(str(config)) and not _leaks(config.model_dump_json())
    assert not _leaks(info.model_dump_json())
    assert config.data.storage_options == options  # still usable in the process that was given them
    # an error text that quotes a storage option (as some filesystems do) is masked once the options were used
    assert not _leaks(redact(f"auth failed for key {FAKE['option_key']} secret {FAKE['option_secret']}"))


def test_error_texts_mask_url_passwords_and_known_secrets(tmp_path, monkeypatch):
    from dpe_core.io import read_photo
    from dpe_core.io.errors import PhotoError
    from dpe_core.nn import ModelFileError, load_model

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE["env_secret"])
    url = f"ftp://alice:{FAKE['url_password']}@127.0.0.1:9/photos/a.jpg"  # nothing listens on port 9
    with pytest.raises(PhotoError) as info:
        read_photo(url)
    assert not _leaks(str(info.value)) and "ftp://***@127.0.0.1:9/photos/a.jpg" in str(info.value)
    with pytest.raises(ModelFileError) as model_info:
        load_model(f"https://bob:{FAKE['url_password']}@127.0.0.1:9/m.safetensors")
    assert not _leaks(str(model_info.value))
    from tasks.enhance import _error_reason

    assert not _leaks(_error_reason(OSError(f"denied: secret {FAKE['env_secret']} at {url}")))
    assert _error_reason(MemoryError()) == "MemoryError: out of memory while processing this photo"


def _flow_run_texts(dest: str) -> str:
    """Everything the Prefect server keeps about the flow run(s) writing to ``dest`` that people read: logs,
    artifacts, state messages, parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    parts = []
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
                if dest in json.dumps(r.parameters, default=str)]
        assert runs, f"no flow run for {dest}"
        for run in runs:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            parts += [log.message for log in logs] + [json.dumps(a.data, default=str) for a in artifacts]
            parts += [run.state.message or "" if run.state else "", json.dumps(run.parameters, default=str)]
    return "\n".join(parts)


def test_enhance_run_on_s3_with_secret_block_and_env_credentials_leaks_nothing(cli_env, testdata, tmp_path):
    """`dpe enhance` from S3 (moto) to a local folder: credentials from a Secret block (used) and the environment
    (present); two good photos and two damaged ones (error texts). Nothing the run left behind holds a fake
    secret: destination files, CLI output (verbose: Prefect and Dask logs too), the server's logs/artifacts."""
    import fsspec
    from prefect.blocks.system import Secret

    endpoint = cli_env["AWS_ENDPOINT_URL_S3"]
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("s3", key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    for rel, src in {"a/canon_s40.jpg": "camera/canon_s40.jpg", "a/iphone4s_gps.jpg": "camera/iphone4s_gps.jpg",
                     "bad/corrupt_random.jpg": "edge/corrupt_random.jpg",
                     "bad/truncated.png": "edge/truncated.png"}.items():
        fs.pipe_file(f"{bucket}/src/{rel}", (testdata / src).read_bytes())
    block = f"dpe-secret-test-{uuid.uuid4().hex[:6]}"
    Secret(value=json.dumps({"s3": {"key": FAKE["block_key"], "secret": FAKE["block_secret"],
                                    "endpoint_url": endpoint}})).save(block, overwrite=True)
    env = cli_env | {"AWS_SECRET_ACCESS_KEY": FAKE["env_secret"], "AWS_SESSION_TOKEN": FAKE["env_token"],
                     "AWS_ACCESS_KEY_ID": "AKIAENVKEY0000000000"}
    dst = tmp_path / "dst"
    done = subprocess.run(dpe_command("enhance", f"s3://{bucket}/src", str(dst), "--storage-block", block,
                                      "--workers", "1", "--mode", "paper", "--registry", str(tmp_path / "registry"),
                                      "--json", "--verbose"),
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]  # 1: some photos failed (the corrupt ones)
    summary = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    assert summary["counts"]["ok"] == 2 and summary["counts"]["error"] == 2, summary
    assert not _leaks(done.stdout) and not _leaks(done.stderr), (_leaks(done.stdout), _leaks(done.stderr))
    assert _files_with_secrets(dst) == {}
    texts = _flow_run_texts(str(dst))
    assert "corrupt_random.jpg" in texts or "2 failed" in texts or texts  # the server kept something to search
    assert not _leaks(texts)
    home = Path(env["DPE_HOME"])
    if home.exists():
        assert _files_with_secrets(home) == {}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
