"""CPU threads: cores from affinity and cgroup quota files, the strip pool, threaded == serial full-size stages."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpe_core.guided import EAGER, PixelSource, apply_affine, area_downscale
from dpe_core.inference import Enhancer
from dpe_core.threads import StripPool, available_cpus, cgroup_cpu_limit, strip_pool

CPU = torch.device("cpu")


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup file and a cgroup mount holding the given files (paths relative to the mount)."""
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_line + "\n")
    mount = tmp_path / "sys_fs_cgroup"
    for rel, text in files.items():
        (mount / rel).parent.mkdir(parents=True, exist_ok=True)
        (mount / rel).write_text(text + "\n")
    mount.mkdir(exist_ok=True)
    return proc, mount


def test_cgroup_v2_quota_is_read_and_the_smallest_limit_on_the_path_wins(tmp_path):
    proc, mount = _cgroup(tmp_path, "0::/kubepods/pod1/ctr", {
        "cpu.max": "max 100000",
        "kubepods/cpu.max": "400000 100000",
        "kubepods/pod1/cpu.max": "150000 100000",
        "kubepods/pod1/ctr/cpu.max": "max 100000",
    })
    assert cgroup_cpu_limit(proc, mount) == pytest.approx(1.5)
    assert available_cpus(proc, mount) == 1  # rounded down: a second thread would get the cgroup throttled


def test_cgroup_v2_in_a_container_reads_its_own_root(tmp_path):
    # The container sees a host path in /proc/self/cgroup, but its own cgroup is mounted at the root.
    proc, mount = _cgroup(tmp_path, "0::/system.slice/docker-abc.scope", {"cpu.max": "100000 100000"})
    assert cgroup_cpu_limit(proc, mount) == pytest.approx(1.0)
    assert available_cpus(proc, mount) == 1


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    proc, mount = _cgroup(tmp_path, "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x", {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000",
    })
    assert cgroup_cpu_limit(proc, mount) == pytest.approx(0.5)
    assert available_cpus(proc, mount) == 1  # never below one
    (mount / "cpu,cpuacct/docker/x/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(proc, mount) is None


def test_no_quota_means_the_affinity_mask(tmp_path):
    proc, mount = _cgroup(tmp_path, "0::/user.slice", {"user.slice/cpu.max": "max 100000"})
    assert cgroup_cpu_limit(proc, mount) is None
    assert cgroup_cpu_limit(tmp_path / "missing", mount) is None
    assert available_cpus(proc, mount) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_thread_counts_honour_the_affinity_mask():
    code = (
        "import os, torch; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
        "from dpe_core.threads import available_cpus; from dpe_core.inference import Enhancer;"
        "e = Enhancer(lambda x: x, device='cpu');"
        "print(available_cpus(), e.threads, e.pool.workers, torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == ["1", "1", "1", "1"]


def test_pool_threads_run_torch_single_threaded_and_leave_the_caller_alone():
    before = torch.get_num_threads()
    pool = StripPool(2)
    assert torch.get_num_threads() == before
    seen: set[int] = set()
    lock = threading.Lock()

    def probe(_):
        time.sleep(0.01)
        with lock:
            seen.add(torch.get_num_threads())

    pool.run(probe, range(8))
    assert seen == {1}
    with torch.inference_mode():
        assert pool.call(torch.is_inference_mode_enabled) is True
    assert pool.call(torch.is_inference_mode_enabled) is False


def test_pool_runs_every_item_once_and_reraises_errors():
    pool = strip_pool(2)
    done: list[int] = []
    pool.run(done.append, range(100))
    assert sorted(done) == list(range(100))

    def boom(i):
        if i == 3:
            raise ValueError("strip 3")

    with pytest.raises(ValueError, match="strip 3"):
        pool.run(boom, range(10))
    pool.run(done.append, [7])  # still usable afterwards
    assert pool.call(lambda: pool.call(lambda: 5)) == 5  # nested calls run inline instead of deadlocking


def test_ordered_commits_keep_item_order_whatever_finishes_first():
    pool = StripPool(3)
    committed: list[int] = []

    def prepare(i):
        time.sleep(0.02 * ((7 * i) % 5))  # later items often finish first
        return i

    pool.run_ordered(prepare, committed.append, range(20))
    assert committed == list(range(20))


@pytest.fixture(scope="module")
def real_photo(testdata) -> np.ndarray:
    with Image.open(testdata / "natural" / "lomiri_sunset.jpg") as im:
        return np.array(im.convert("RGB"))[:1400, :2100]  # a real 3 MP crop: the same strips, a quarter the time


def test_threaded_apply_equals_the_serial_one_on_a_real_photo(real_photo):
    torch.manual_seed(0)
    coeffs = torch.randn(12, 341, 512) * 0.05
    coeffs[[0, 5, 10]] += 1.0
    src = PixelSource(real_photo)
    serial = apply_affine(src, coeffs, CPU, kernel=EAGER)
    for workers in (1, 2, 3):
        threaded = apply_affine(src, coeffs, CPU, kernel=EAGER, pool=strip_pool(workers))
        assert np.array_equal(threaded, serial), workers


def test_threaded_downscale_does_not_depend_on_the_pool(real_photo):
    src = PixelSource(real_photo)
    one = area_downscale(src, (341, 512), CPU, pool=strip_pool(1))
    for workers in (2, 3):
        assert torch.equal(area_downscale(src, (341, 512), CPU, pool=strip_pool(workers)), one)
    serial = area_downscale(src, (341, 512), CPU)  # torch's own threads: summation order may differ by rounding
    assert (serial - one).abs().max() <= 1e-6


def test_warm_up_compiles_the_apply_so_no_photo_waits_for_a_compiler(real_photo):
    from torch._dynamo.utils import counters

    enhancer = Enhancer(lambda x: x.clamp(0, 1) * 0.9, device="cpu", compile_apply="auto", compile_min_pixels=1)
    src = PixelSource(real_photo)
    assert enhancer._kernel_for(src) is EAGER  # 'auto' before warm-up: eager, never compiling in a call
    seconds = enhancer.warm_up()
    if "compile_apply" not in seconds or enhancer._apply_compile_failed:
        pytest.skip("no working C++ compiler for inductor on this machine")
    assert enhancer._kernel_for(src) is enhancer._apply_kernel
    graphs = counters["stats"]["unique_graphs"]
    out = enhancer.enhance(real_photo, "full")
    assert counters["stats"]["unique_graphs"] == graphs  # the photo ran the kernel compiled at warm-up
    reference = Enhancer(lambda x: x.clamp(0, 1) * 0.9, device="cpu", compile_apply="off").enhance(real_photo)
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1
