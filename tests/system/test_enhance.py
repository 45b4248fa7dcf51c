"""enhance_archive end to end: real Prefect server, real Dask workers, real photos, local and S3 storage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.core.exiftool_support import MUST_CHANGE, assert_metadata_carried, exiftool_tags
from tests.system.conftest import REPO, dpe_command
from tests.tasks.helpers import ARCHIVE, CORRUPT, image_files, latest_report, make_folder, read_jsonl, sha256_files


def allowed_changes(src_tags: dict) -> tuple[str, ...]:
    """What enhancing may change (docs/photo-io.md): the encoding, the EXIF thumbnail, orientation when turned."""
    allowed = MUST_CHANGE["encoding"] + MUST_CHANGE["thumbnail"]
    if src_tags.get("IFD0:Orientation") not in (None, 1) or src_tags.get("XMP-tiff:Orientation") not in (None, 1):
        allowed += MUST_CHANGE["rotated"]
    return allowed


def check_metadata(src: Path | bytes, dst: Path | bytes) -> None:
    src_tags = exiftool_tags(src)
    assert_metadata_carried(src_tags, exiftool_tags(dst), allowed_changes=allowed_changes(src_tags))


def flow_run_artifacts(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))


def test_enhance_local_folder_then_rerun_does_no_work(dask_address, model_ref, testdata, tmp_path):
    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    src = make_folder(tmp_path / "archive", testdata, ARCHIVE)
    originals = sha256_files(src)
    dst = tmp_path / "enhanced"
    params = EnhanceParams(source_url=str(src), dest_url=str(dst), dask_address=dask_address, shard_size=4,
                           model=model_ref, registry_url=str(tmp_path / "registry"), bf16="off")
    state = enhance_archive(params, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["counts"] == {"ok": len(ARCHIVE), "skipped": 0, "error": 0}
    assert "0 failed" in state.message
    assert summary["shards"] == 3 and summary["workers"] == 2
    assert 0 < summary["first_output_s"] <= summary["total_s"]
    assert summary["precision"] == ["fp32"]  # the run's bf16="off" reached every worker

    assert image_files(dst) == sorted(ARCHIVE)
    report = latest_report(dst)
    assert sorted(r["input"] for r in report) == sorted(ARCHIVE)  # every input exactly once
    assert {r["status"] for r in report} == {"ok"}
    for record in report:
        out = dst / record["output"]
        assert record["output_size"] == out.stat().st_size
        assert set(record["timings"]) >= {"read", "decode", "enhance", "encode", "write"}
        check_metadata(src / record["input"], out)
    assert sha256_files(src) == originals
    assert not list(dst.rglob(".dpe-tmp-*"))
    manifest = read_jsonl(dst / ".dpe" / "manifest.jsonl")
    assert sorted(r["input"] for r in manifest) == sorted(ARCHIVE)
    assert not (dst / ".dpe" / "records").exists()

    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    kinds = {a.type for a in artifacts}
    assert {"progress", "table", "markdown"} <= kinds
    markdown = next(a for a in artifacts if a.type == "markdown").data
    assert "Before / after" in markdown and "data:image/jpeg;base64," in markdown
    assert next(a for a in artifacts if a.type == "progress").data == 100.0

    mtimes = {p: (dst / p).stat().st_mtime_ns for p in image_files(dst)}
    again = enhance_archive(params, return_state=True)
    summary = again.result()
    assert summary["counts"] == {"ok": 0, "skipped": len(ARCHIVE), "error": 0}
    assert summary["shards"] == 0 and summary["cluster"] is None  # no enhancement work, not even a cluster
    assert summary["first_output_s"] is None
    assert {p: (dst / p).stat().st_mtime_ns for p in image_files(dst)} == mtimes
    assert sorted(r["input"] for r in latest_report(dst)) == sorted(ARCHIVE)


def _run_cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(dpe_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_enhance_s3_to_s3_from_a_flow_process_without_torch(dask_address, cli_env, model_ref, testdata, tmp_path):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.mkdir("photos")
    chosen = {k: v for k, v in ARCHIVE.items() if k.startswith(("2004/", "2015/", "scans/"))}
    for rel, src in chosen.items():
        fs.pipe_file(f"photos/archive/{rel}", (testdata / src).read_bytes())
    # The `dpe enhance` CLI in a fresh interpreter; afterwards, report whether that process ever imported torch.
    script = ("import sys\nfrom flows.cli import app\ncode = 0\ntry:\n    app(sys.argv[1:])\n"
              "except SystemExit as exc:\n    code = exc.code\nprint('TORCH_IMPORTED', 'torch' in sys.modules)\n"
              "sys.exit(code)\n")
    args = ["s3://photos/archive", "s3://photos/enhanced", "--dask-address", dask_address, "--model", model_ref,
            "--registry", str(tmp_path / "registry"), "--json", "--bf16", "on"]
    done = subprocess.run([sys.executable, "-c", script, "enhance", *args], env=cli_env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TORCH_IMPORTED False" in done.stdout
    summary = json.loads(done.stdout[: done.stdout.rindex("TORCH_IMPORTED")])
    assert summary["counts"]["ok"] == len(chosen)
    assert summary["precision"] == ["bf16"]  # --bf16 is a run parameter: it reached the cluster's own workers
    fs.invalidate_cache()
    outputs = sorted(p[len("photos/enhanced/"):] for p in fs.find("photos/enhanced") if "/.dpe/" not in p)
    assert outputs == sorted(chosen)
    report_path = summary["report_url"]
    report = [json.loads(line) for line in fs.cat_file(report_path).decode().splitlines()]
    assert sorted(r["input"] for r in report) == sorted(chosen)
    for rel, src in chosen.items():
        check_metadata((testdata / src).read_bytes(), fs.cat_file(f"photos/enhanced/{rel}"))
        assert fs.cat_file(f"photos/archive/{rel}") == (testdata / src).read_bytes()


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process ended ({process.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_run_resumes_without_duplicates_or_partial_files(cli_env, model_ref, testdata, tmp_path):
    natural = {f"natural/{n}": f"natural/{n}" for n in ("kpa_pool.jpg", "kpa_snow.jpg", "kpa_skagen.jpg",
                                                        "kpa_wayne.jpg", "kpa_donna.jpg", "egret.jpg")}
    files = ARCHIVE | natural | {f"again/{rel}": src for rel, src in (ARCHIVE | natural).items()}  # 32 photos
    src = make_folder(tmp_path / "archive", testdata, files)
    originals = sha256_files(src)
    dst = tmp_path / "enhanced"
    args = ["enhance", str(src), str(dst), "--workers", "2", "--shard-size", "1", "--mode", "paper", "--model",
            model_ref, "--registry", str(tmp_path / "registry")]
    # The flow process starts its own 2-worker cluster; kill it (SIGKILL, by its handle) once two shards have
    # recorded their photos and while others are still being enhanced.
    process = subprocess.Popen(dpe_command(*args), env=cli_env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        records = dst / ".dpe" / "records"
        _wait_for(lambda: len(list(records.glob("*/shard-*.jsonl"))) >= 2, 300, "two finished shards", process)
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= 2  # the nannies/workers of its local cluster
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # Its Dask workers exit with it (they watch their parent); nothing keeps writing.
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    done_before = image_files(dst)
    assert 0 < len([p for p in done_before if not Path(p).name.startswith(".dpe-tmp-")]) < len(files)
    from dpe_core.io import decode_photo

    for rel in done_before:  # a file under its final name is complete (atomic writes)
        if not Path(rel).name.startswith(".dpe-tmp-"):
            decode_photo((dst / rel).read_bytes(), rel)

    finished = _run_cli(args + ["--json"], cli_env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads(finished.stdout)
    assert summary["counts"]["error"] == 0
    assert summary["counts"]["skipped"] >= 2  # the recorded shards of the killed run are not redone
    assert summary["counts"]["ok"] + summary["counts"]["skipped"] == len(files)
    assert image_files(dst) == sorted(files)  # no duplicates, no temp files
    report = latest_report(dst)
    assert sorted(r["input"] for r in report) == sorted(files)
    manifest = read_jsonl(dst / ".dpe" / "manifest.jsonl")
    assert sorted(r["input"] for r in manifest) == sorted(files) and {r["status"] for r in manifest} == {"ok"}
    assert sha256_files(src) == originals


def test_corrupt_files_are_reported_and_exit_code_is_1_with_an_embedded_server(cli_env, model_ref, testdata,
                                                                                tmp_path):
    """Zero configuration: no PREFECT_API_URL, so `dpe` starts (and stops) its own Prefect server."""
    good = {k: v for k, v in ARCHIVE.items() if k.startswith("2004/")}
    src = make_folder(tmp_path / "mixed", testdata, good | CORRUPT)
    dst = tmp_path / "out"
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    done = _run_cli(["enhance", str(src), str(dst), "--workers", "2", "--mode", "paper", "--json",
                     "--model", model_ref, "--registry", str(tmp_path / "registry")], env)
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["counts"] == {"ok": len(good), "skipped": 0, "error": len(CORRUPT)}
    report = {r["input"]: r for r in latest_report(dst)}
    assert sorted(report) == sorted(good | CORRUPT)
    expected = {"bad/truncated_premature_end.jpg": "truncated", "bad/corrupt_random.jpg": "corrupt",
                "bad/corrupt_png_sig.png": "not a recognised image format", "bad/bomb_800gpx.png": "too many pixels"}
    for rel, words in expected.items():
        assert report[rel]["status"] == "error" and words in report[rel]["reason"] and rel in report[rel]["reason"]
    assert image_files(dst) == sorted(good)
    # It started its own server (SQLite under the dpe home) and stopped it at the end.
    from flows.server import healthy

    assert "starting a local Prefect server" in done.stderr
    ui = re.search(r"Prefect UI at (http://127\.0\.0\.1:\d+)", done.stderr).group(1)
    assert not healthy(f"{ui}/api")
    assert (Path(env["DPE_HOME"]) / "prefect" / "prefect.db").is_file()
