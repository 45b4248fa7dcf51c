"""GPU routing without a GPU: work goes only to workers that declare the Dask resource GPU=1, and asking for
CUDA where no worker offers it stops at once instead of queueing forever."""

from __future__ import annotations

import logging
import subprocess

from tests.system.conftest import REPO, dpe_command
from tests.tasks.helpers import latest_report, make_folder


def test_shards_go_only_to_workers_offering_gpu(prefect_server, s3_endpoint, model_ref, testdata, tmp_path):
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    env = {"PREFECT_API_URL": prefect_server.api_url} | s3_endpoint[1]
    cluster = SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        workers={"gpu-0": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}, "env": env}},
                 "cpu-0": {"cls": Nanny, "options": {"nthreads": 1, "env": env}}},
        silence_logs=logging.WARNING)
    try:
        with Client(cluster.scheduler_address, set_as_default=False) as client:
            pids = client.run(lambda dask_worker: (dask_worker.name, __import__("os").getpid()))
        gpu_pid = next(pid for name, pid in pids.values() if name == "gpu-0")
        files = {f"p{i}.jpg": src for i, src in enumerate(
            ["camera/canon_s40.jpg", "camera/iphone4s_gps.jpg", "camera/nikon_d100_icc_xmp.jpg", "natural/egret.jpg"])}
        src = make_folder(tmp_path / "src", testdata, files)
        dst = tmp_path / "dst"
        state = enhance_archive(EnhanceParams(source_url=str(src), dest_url=str(dst), model=model_ref, mode="paper",
                                              shard_size=1, dask_address=cluster.scheduler_address,
                                              registry_url=str(tmp_path / "registry")), return_state=True)
        summary = state.result()
        assert summary["counts"]["ok"] == len(files) and summary["shards"] == len(files)
        workers = {r["worker"].rsplit(":", 1)[1] for r in latest_report(dst)}
        assert workers == {str(gpu_pid)}  # annotated resources={"GPU": 1}: never the CPU-only worker
    finally:
        cluster.close()


def test_device_cuda_without_gpu_workers_stops_at_once(dask_address, cli_env, model_ref, testdata, tmp_path):
    src = make_folder(tmp_path / "src", testdata, {"a.jpg": "camera/canon_s40.jpg"})
    done = subprocess.run(dpe_command("enhance", str(src), str(tmp_path / "dst"), "--device", "cuda", "--model",
                                      model_ref, "--dask-address", dask_address, "--json"),
                          env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no Dask worker offers the resource GPU" in done.stderr
    assert not (tmp_path / "dst" / "a.jpg").exists()
