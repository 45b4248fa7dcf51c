"""Two runs on one destination: the destination lock (tasks/lease.py) on a local disk and on S3 (moto), stale
leases, and two real `dpe enhance` processes on the same destination."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.lease import DestinationLock, DestinationLocked, LeaseLost
from tests.conftest import REPO, dpe_command
from tests.tasks.helpers import ARCHIVE, image_files, make_folder, read_jsonl, sha256_files

RACE_SCRIPT = """
import sys, time
from tasks.lease import DestinationLock, DestinationLocked, LeaseLost
lock = DestinationLock(sys.argv[1], run=sys.argv[2], ttl_s=30)
start = float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
try:
    lock.acquire()
except DestinationLocked as exc:
    print("LOCKED", exc)
    sys.exit(0)
print("HOLDER", lock.owner)
time.sleep(3)
lock.release()
"""


def _race(dest: str, contenders: int, env: dict | None = None) -> list[str]:
    """Start processes that all try to take the lock at the same instant; their outputs."""
    start = time.time() + 4
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, dest, f"racer-{i}", str(start)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(contenders)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out.strip())
    return outs


@pytest.mark.parametrize("store", ["local", "s3"])
def test_exactly_one_of_many_racing_processes_gets_the_lock(store, s3_endpoint, tmp_path):
    if store == "s3":
        import fsspec

        fsspec.filesystem("s3").mkdir("locks")
        dest = "s3://locks/dest"
    else:
        dest = str(tmp_path / "dest")
    outs = _race(dest, 5, env=dict(os.environ))
    holders = [o for o in outs if o.startswith("HOLDER")]
    assert len(holders) == 1, outs
    for out in outs:
        if out.startswith("LOCKED"):
            assert "is in use by another dpe run" in out and "pid" in out and socket.gethostname() in out


def _write_lease(dest: Path, **fields) -> None:
    lease = {"owner": "0123456789ab", "run": "old", "host": socket.gethostname(), "pid": 1, "pid_started": 0.0,
             "pidns": os.stat("/proc/self/ns/pid").st_ino, "expires": time.time() + 3600, "ttl_s": 3600} | fields
    (dest / ".dpe").mkdir(parents=True, exist_ok=True)
    (dest / ".dpe" / "lock.json").write_text(json.dumps(lease))


def test_stale_leases_are_taken_over_and_live_ones_are_not(tmp_path):
    dest = tmp_path / "dest"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cases = {  # lease fields -> taken over?
        "holder process gone (this machine)": ({"pid": dead.pid}, True),
        "pid reused by a later process": ({"pid": os.getpid(), "pid_started": 1.0}, True),
        "expired (another machine)": ({"host": "elsewhere", "expires": time.time() - 1}, True),
        "live (another machine)": ({"host": "elsewhere"}, False),
        "live (this machine)": ({"pid": os.getppid(), "pid_started": None}, False),
    }
    for what, (fields, taken) in cases.items():
        _write_lease(dest, **fields)
        lock = DestinationLock(str(dest), run="new")
        if taken:
            with lock:
                assert json.loads((dest / ".dpe" / "lock.json").read_text())["owner"] == lock.owner, what
                assert lock.took_over["owner"] == "0123456789ab"
            assert not (dest / ".dpe" / "lock.json").exists(), what  # released at the end
        else:
            with pytest.raises(DestinationLocked, match="run old"):
                lock.acquire()
    # a torn lease file (a writer killed mid-write on a filesystem without atomic create) is stale
    (dest / ".dpe" / "lock.json").write_text('{"owner": "x", "exp')
    with DestinationLock(str(dest)):
        pass


def test_the_holder_renews_its_lease_and_notices_when_it_is_taken(tmp_path, s3_endpoint):
    import fsspec

    fsspec.filesystem("s3").mkdir("renew")
    for dest in (str(tmp_path / "dest"), "s3://renew/dest"):
        holder = DestinationLock(dest, run="a", ttl_s=1.5).acquire()
        try:
            time.sleep(2.5)  # past the first expiry: renewed meanwhile
            with pytest.raises(DestinationLocked):
                DestinationLock(dest, run="b").acquire()
            assert holder.lost is None
            # someone forces the lease away (an operator deleting it, a run that saw it stale)
            fs, path = fsspec.core.url_to_fs(holder.url)
            fs.rm_file(path)
            other = DestinationLock(dest, run="c", ttl_s=60).acquire()
            deadline = time.monotonic() + 15
            while holder.lost is None and time.monotonic() < deadline:
                time.sleep(0.1)
            # Its renewal sees the lease gone or someone else's, depending on when it looks: lost either way.
            assert holder.lost and ("taken over" in holder.lost or "was removed" in holder.lost)
            other.release()
        finally:
            holder.release()


def test_a_lease_taken_between_the_renewal_read_and_write_is_reported_as_taken(tmp_path, s3_endpoint):
    """The renewal reads the lease, then writes it conditionally; another run acting in between is named."""
    import fsspec

    fsspec.filesystem("s3").mkdir("renew-race")
    for dest in (str(tmp_path / "dest"), "s3://renew-race/dest"):
        holder = DestinationLock(dest, run="a", ttl_s=600).acquire()
        read_once = holder.store.read
        others = []

        def read_then_lose_it(read_once=read_once, others=others, holder=holder, dest=dest):
            seen = read_once()
            if not others:  # the first read only: the lease goes to run "c" right after it
                fs, path = fsspec.core.url_to_fs(holder.url)
                fs.rm_file(path)
                others.append(DestinationLock(dest, run="c", ttl_s=600).acquire())
            return seen

        holder.store.read = read_then_lose_it
        try:
            holder.renew()
            assert holder.lost and "taken over" in holder.lost and "c" in holder.lost
            with pytest.raises(LeaseLost):
                holder.check()
        finally:
            holder.release()
            for other in others:
                other.release()


def test_waiting_run_gets_the_lock_when_the_holder_releases_it(tmp_path):
    dest = str(tmp_path / "dest")
    holder = DestinationLock(dest, run="a").acquire()
    threading.Timer(1.0, holder.release).start()
    t0 = time.monotonic()
    with DestinationLock(dest, run="b", wait_s=30, poll_s=0.2) as second:
        assert second.owner != holder.owner
    assert 0.8 < time.monotonic() - t0 < 20


def test_the_manifest_is_merged_with_what_another_run_wrote_meanwhile(tmp_path):
    """write_report merges onto the destination's state as it is when it writes (not as planned)."""
    from flows.enhance import write_report

    dest = tmp_path / "dest"
    (dest / ".dpe").mkdir(parents=True)
    theirs = {"input": "b.jpg", "output": "b.jpg", "status": "ok", "finished": "2026-01-01T00:00:00+00:00"}
    (dest / ".dpe" / "manifest.jsonl").write_text(json.dumps(theirs) + "\n")
    ours = {"input": "a.jpg", "output": "a.jpg", "status": "ok", "finished": "2026-01-01T00:00:01+00:00"}
    write_report.fn(str(dest), "run-1", [ours], {"counts": {}})
    manifest = {r["input"]: r for r in read_jsonl(dest / ".dpe" / "manifest.jsonl")}
    assert sorted(manifest) == ["a.jpg", "b.jpg"]


def _cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen(dpe_command(*args), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_two_dpe_runs_on_one_destination(dask_address, cli_env, model_ref, testdata, tmp_path):
    src = make_folder(tmp_path / "archive", testdata, ARCHIVE)
    originals = sha256_files(src)
    dst = tmp_path / "enhanced"
    base = ["enhance", str(src), str(dst), "--dask-address", dask_address, "--mode", "paper", "--model", model_ref,
            "--registry", str(tmp_path / "registry"), "--json"]

    # Another run holds the destination (this test process): a second run exits 3 at once, naming the holder,
    # and leaves the holder's temp files alone.
    other = DestinationLock(str(dst), run="other-run").acquire()
    (dst / "2004").mkdir(parents=True)
    theirs = dst / "2004" / f".dpe-tmp-{other.owner}-0123abcd"
    theirs.write_bytes(b"being written")
    refused = _cli(base, cli_env)
    out, err = refused.communicate(timeout=300)
    assert refused.returncode == 3, err[-3000:]
    assert "is in use by another dpe run" in err and "other-run" in err and str(os.getpid()) in err
    assert theirs.exists() and not image_files(dst)[1:]

    # A run told to wait does so (and touches nothing meanwhile), then runs when the holder lets go.
    waiter = _cli(base + ["--lock-wait", "600"], cli_env)
    time.sleep(8)
    assert waiter.poll() is None and theirs.exists() and not image_files(dst)[1:]
    other.release()
    out, err = waiter.communicate(timeout=600)
    assert waiter.returncode == 0, err[-3000:]
    assert "waiting up to 600 s for run other-run" in err
    assert json.loads(out)["counts"] == {"ok": len(ARCHIVE), "skipped": 0, "error": 0}
    assert image_files(dst) == sorted(ARCHIVE)  # the gone holder's stale temp file was removed by the new holder

    # Two real runs at once on a fresh destination, the second told to wait: both complete, one after the other;
    # each input is enhanced once, by one of them, and reported once in each.
    dst2 = tmp_path / "enhanced-2"
    both = ["enhance", str(src), str(dst2)] + base[3:]
    first = _cli(both, cli_env)
    deadline = time.monotonic() + 300
    while not (dst2 / ".dpe" / "lock.json").exists():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = _cli(both + ["--lock-wait", "600"], cli_env)
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    counts = sorted((json.loads(out)["counts"] for out in (out1, out2)), key=lambda c: c["ok"])
    assert counts == [{"ok": 0, "skipped": len(ARCHIVE), "error": 0}, {"ok": len(ARCHIVE), "skipped": 0, "error": 0}]
    for run in sorted((dst2 / ".dpe" / "runs").iterdir()):
        assert sorted(r["input"] for r in read_jsonl(run / "report.jsonl")) == sorted(ARCHIVE)
    manifest = read_jsonl(dst2 / ".dpe" / "manifest.jsonl")
    assert sorted(r["input"] for r in manifest) == sorted(ARCHIVE)
    assert image_files(dst2) == sorted(ARCHIVE)
    assert not (dst / ".dpe" / "lock.json").exists() and not (dst2 / ".dpe" / "lock.json").exists()
    assert sha256_files(src) == originals
