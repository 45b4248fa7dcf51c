"""The decoder process's transport (tasks/decoder_transport.py): large pixel buffers come back through /dev/shm,
bit for bit, writable, and no file is left behind; a child cannot make the worker open other files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tasks.decoder_process as dp
import tasks.decoder_transport as transport

pytestmark = pytest.mark.skipif(not transport.shm_usable(), reason="needs a writable /dev/shm (Linux)")


def _ours() -> list[str]:
    return [n for n in os.listdir(transport.SHM_DIR) if n.startswith(f"{transport.SHM_PREFIX}{os.getpid()}-")]


def _large_photo(testdata: Path) -> tuple[bytes, str]:
    """A real photo whose pixels are well over SHM_MIN_BYTES."""
    from dpe_core.io import decode_photo

    for path in sorted((testdata / "natural").iterdir()):
        data = path.read_bytes()
        if decode_photo(data, path.name).pixels.nbytes >= 2 * transport.SHM_MIN_BYTES:
            return data, path.name
    raise AssertionError("no natural photo over 2 MiB decoded")


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "pipe-only"])
def test_a_large_photo_comes_back_exactly_and_leaves_no_file(testdata, monkeypatch, shared_memory):
    from dpe_core.io import decode_photo

    data, name = _large_photo(testdata)
    mapped = []
    real_map = dp.map_shm
    monkeypatch.setattr(dp, "map_shm", lambda *a: mapped.append(a[0]) or real_map(*a))
    child = dp.DecoderProcess()
    child._shm = shared_memory
    try:
        photo = child.decode(data, name, 60)
        again = child.decode(data, name, 60)  # the next request gets its own files
    finally:
        child.close()
    reference = decode_photo(data, name)
    assert np.array_equal(photo.pixels, reference.pixels) and np.array_equal(again.pixels, reference.pixels)
    assert photo.exif == reference.exif and photo.icc_profile == reference.icc_profile
    photo.pixels[0, 0] = 255 - photo.pixels[0, 0]  # the worker may write into what it got (copy-on-write)
    assert bool(mapped) == shared_memory and len(set(mapped)) == len(mapped)
    assert not _ours()


def test_a_child_cannot_name_a_file_outside_its_request(tmp_path):
    prefix = f"{transport.SHM_PREFIX}{os.getpid()}-0-7-"
    with pytest.raises(ValueError, match="not under"):
        transport.map_shm("../../etc/passwd", prefix, 10)
    assert transport.write_shm(f"{prefix}x", b"x" * 10)
    with pytest.raises(ValueError, match="not under"):  # a request that offered no shared memory accepts none
        transport.map_shm(f"{prefix}x", None, 10)
    assert transport.remove_shm("") == 0 and transport.remove_shm(prefix) == 1
    with pytest.raises(ValueError, match="not under"):
        transport.map_shm(f"{transport.SHM_PREFIX}{os.getpid()}-0-8-0", prefix, 10)  # another request's file
    assert transport.write_shm(f"{prefix}0", b"x" * 4096)
    with pytest.raises(ValueError, match="holds 4096 bytes, not 8192"):
        transport.map_shm(f"{prefix}0", prefix, 8192)
    assert not _ours()  # refused, and removed all the same


def test_files_of_a_failed_request_and_of_a_dead_worker_are_removed():
    prefix = f"{transport.SHM_PREFIX}{os.getpid()}-0-9-"
    for index in range(3):
        assert transport.write_shm(f"{prefix}{index}", b"x" * 100)
    assert transport.remove_shm(prefix) == 3 and not _ours()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = f"{transport.SHM_PREFIX}{int(dead.stdout)}-1-0-0"
    live = f"{transport.SHM_PREFIX}{os.getpid()}-1-0-0"
    assert transport.write_shm(stale, b"x") and transport.write_shm(live, b"x")
    try:
        transport.remove_stale_shm()
        assert not os.path.exists(os.path.join(transport.SHM_DIR, stale))
        assert os.path.exists(os.path.join(transport.SHM_DIR, live))  # a live worker's files stay
    finally:
        transport.remove_shm(live)


def test_a_buffer_too_large_for_the_free_shared_memory_takes_the_pipe(monkeypatch):
    # A container's /dev/shm is often 64 MB: a buffer over half the free space is not written there at all.
    monkeypatch.setattr(transport, "shm_free_bytes", lambda: 3 * 2**20)
    name = f"{transport.SHM_PREFIX}{os.getpid()}-0-11-0"
    assert not transport.write_shm(name, b"x" * (2 * 2**20))
    assert not _ours()
    assert transport.write_shm(name, b"x" * 2**20)  # half the free space fits
    transport.remove_shm(name)
