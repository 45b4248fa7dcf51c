"""Poison photos: a decode that hangs or crashes natively costs that photo only (tasks/decoder_process.py), and a
worker that dies on a photo is not killed by it a third time (tasks/enhance.py ShardLedger).

The misbehaviour is real (a busy loop, SIGSEGV, SIGABRT in the process that decodes), injected through the
documented DPE_DECODER extension point with real photos that carry a marker after their end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, dpe_command
from tests.reliability.poison_decoder import poison
from tests.tasks.helpers import latest_report, read_jsonl, sha256_files

POISON_DECODER = "tests.reliability.poison_decoder:decode"
GOOD = ["camera/canon_s40.jpg", "camera/nikon_e4600_icc_xmp.jpg", "camera/iphone4s_gps.jpg",
        "camera/nokia_n70_iptc.jpg", "natural/chelsea.png", "orientation/hopper_6.webp"]
REASONS = {"poison/hang.jpg": "timed out after 3 s while decoding",
           "poison/segv.jpg": "decoder process crashed (signal 11: SIGSEGV)",
           "poison/abort.jpg": "decoder process crashed (signal 6: SIGABRT)"}


def _archive(root: Path, testdata: Path, kinds=("hang", "segv", "abort")) -> Path:
    """Good real photos plus one poisoned copy of a real JPEG per kind (src/poison/<kind>.jpg)."""
    for rel in GOOD:
        target = root / "good" / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((testdata / rel).read_bytes())
    (root / "poison").mkdir(parents=True, exist_ok=True)
    base = (testdata / "camera/canon_s40.jpg").read_bytes()
    for kind in kinds:
        (root / "poison" / f"{kind}.jpg").write_bytes(poison(base, kind))
    return root


def _items(src: Path) -> list[dict]:
    from tasks.plan import WorkItem

    out = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        out.append(WorkItem(rel, str(path), path.stat().st_size, "v", rel).to_dict())
    return out


class Identity:
    """Stands in for the model (these tests are about the process around it)."""

    def enhance(self, photo, mode="paper"):
        return photo.with_pixels(photo.pixels.copy())


@pytest.fixture
def poison_decoders(monkeypatch):
    """This process decodes through the poison decoder, in a fresh pool of decoder processes."""
    import tasks.decoder_process as dp

    monkeypatch.setenv("DPE_DECODER", POISON_DECODER)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    fresh = dp.DecoderPool()
    monkeypatch.setattr(dp, "_POOL", fresh)
    yield fresh
    fresh.close()


@pytest.mark.parametrize("overlap_cpu", [False, True], ids=["decode-in-task-thread", "decode-in-io-threads"])
def test_hang_and_native_crashes_in_the_decoder_cost_only_their_photo(tmp_path, testdata, poison_decoders,
                                                                      overlap_cpu):
    from dpe_core.io import decode_photo
    from tasks.enhance import EnhanceJob, Shard, process_shard

    src = _archive(tmp_path / "src", testdata)
    originals = sha256_files(src)
    dest = tmp_path / "out"
    job = EnhanceJob(model_uri="stub", dest_url=str(dest), records_url=str(dest / ".dpe" / "records" / "r"),
                     source_url=str(src), mode="paper", decode_timeout_s=3, overlap_cpu=overlap_cpu, io_threads=2)
    t0 = time.monotonic()
    result = process_shard(Shard(index=0, items=_items(src)), job, enhancer_factory=Identity)
    elapsed = time.monotonic() - t0

    by_input = {r["input"]: r for r in result.records}
    assert sorted(by_input) == sorted(i["rel"] for i in _items(src))  # every input exactly once
    for rel, words in REASONS.items():
        assert by_input[rel]["status"] == "error" and words in by_input[rel]["reason"], by_input[rel]
        assert not (dest / rel).exists()
    good = [rel for rel in by_input if rel.startswith("good/")]
    assert {by_input[rel]["status"] for rel in good} == {"ok"}
    for rel in good:
        decode_photo((dest / rel).read_bytes(), rel)
    assert elapsed < 3 + 30, elapsed  # one time limit for the hang, not a stalled shard
    assert poison_decoders.replaced == 3  # each poison killed (or timed out) its decoder process, replaced
    assert not list(dest.rglob(".dpe-tmp-*"))
    assert sha256_files(src) == originals
    pids = poison_decoders.pids()
    poison_decoders.close()
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    assert not alive


# A shard run in its own process, as a Dask worker would run it; the decode happens in that process
# (decode_timeout_s=0), so the poison photo kills the "worker" itself.
SHARD_SCRIPT = """
import json, sys
from tasks.enhance import EnhanceJob, Shard, process_shard
from tests.reliability.test_poison import Identity
job = EnhanceJob.model_validate_json(sys.argv[1])
shard = Shard.model_validate_json(sys.argv[2])
result = process_shard(shard, job, enhancer_factory=Identity)
print(json.dumps({"attempt": result.attempt, "resumed": result.resumed, "counts": result.counts}))
"""


def test_a_worker_killed_twice_by_one_photo_records_it_failed_and_keeps_the_rest(tmp_path, testdata):
    from dpe_core.io import decode_photo
    from tasks.enhance import EnhanceJob, Shard

    src = _archive(tmp_path / "src", testdata, kinds=("segv",))
    originals = sha256_files(src)
    dest = tmp_path / "out"
    records = dest / ".dpe" / "records" / "r"
    items = _items(src)
    # The poison photo in the middle; photos before it finished, and some were checkpointed, in the first attempt.
    items = items[:3] + [i for i in items if i["rel"].startswith("poison/")] + \
        [i for i in items[3:] if not i["rel"].startswith("poison/")]
    job = EnhanceJob(model_uri="stub", dest_url=str(dest), records_url=str(records), source_url=str(src),
                     mode="paper", decode_timeout_s=0, overlap_cpu=False, checkpoint_every_s=0)
    shard = Shard(index=4, items=items)
    env = dict(os.environ) | {"DPE_DECODER": POISON_DECODER, "PYTHONPATH": str(REPO)}

    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", SHARD_SCRIPT, job.model_dump_json(), shard.model_dump_json()],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)

    first = attempt()  # the "worker" dies on the poison photo (SIGSEGV)
    assert first.returncode == -11, first.stderr[-2000:]
    saved = {r["input"]: r for r in read_jsonl(records / "shard-00004.jsonl")}
    assert saved and set(saved) <= {i["rel"] for i in items[:3]}  # (photos still being written behind are lost)
    second = attempt()  # Dask's rerun: resumes, goes carefully photo by photo, dies on it again
    assert second.returncode == -11, second.stderr[-2000:]
    assert json.loads((records / "shard-00004.attempt.json").read_text())["current"] == "poison/segv.jpg"
    third = attempt()  # the next rerun knows which photo killed its worker
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads(third.stdout.strip().splitlines()[-1])["attempt"] == 3

    final = {r["input"]: r for r in read_jsonl(records / "shard-00004.jsonl")}
    assert sorted(final) == sorted(i["rel"] for i in items)  # every input exactly once
    reason = final["poison/segv.jpg"]["reason"]
    assert final["poison/segv.jpg"]["status"] == "error" and "worker process died while processing" in reason
    for rel, record in saved.items():  # what the first attempt finished was not redone
        assert final[rel] == record
    for rel in final:
        if rel != "poison/segv.jpg":
            assert final[rel]["status"] == "ok"
            decode_photo((dest / rel).read_bytes(), rel)
    # A worker killed while a write was in flight leaves that write's temp file (never a visible output: every
    # output above decodes). The next run removes such files once it holds the destination lock.
    from tasks.listing import remove_stale_temp_files

    remove_stale_temp_files(str(dest))
    assert not list(dest.rglob(".dpe-tmp-*"))
    assert sha256_files(src) == originals


@pytest.fixture
def poisoned_cluster(dask_address):
    """The session's Dask workers decode through the poison decoder (restored afterwards)."""
    from distributed import Client

    def setup(value):
        import tasks.decoder_process as dp

        if value is None:
            os.environ.pop("DPE_DECODER", None)
        else:
            os.environ["DPE_DECODER"] = value
        dp.pool().close()  # decoder processes started before this point decode the normal way
        return os.getpid()

    with Client(dask_address, set_as_default=False) as client:
        client.run(setup, POISON_DECODER)
        try:
            yield dask_address
        finally:
            client.run(setup, None)


def test_poison_photos_through_dpe_enhance_then_a_rerun_redoes_only_them(poisoned_cluster, cli_env, model_ref,
                                                                         testdata, tmp_path):
    from dpe_core.io import decode_photo

    src = _archive(tmp_path / "src", testdata)
    originals = sha256_files(src)
    dst = tmp_path / "out"
    args = ["enhance", str(src), str(dst), "--dask-address", poisoned_cluster, "--mode", "paper", "--shard-size",
            "5", "--decode-timeout", "3", "--model", model_ref, "--registry", str(tmp_path / "registry"), "--json"]
    env = cli_env | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(dpe_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]  # some photos failed, the run completed
    summary = json.loads(done.stdout)
    assert summary["counts"] == {"ok": len(GOOD), "skipped": 0, "error": len(REASONS)}
    report = {r["input"]: r for r in latest_report(dst)}
    assert len(report) == len(GOOD) + len(REASONS)
    for rel, words in REASONS.items():
        assert report[rel]["status"] == "error" and words in report[rel]["reason"], report[rel]
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()
                     and ".dpe" not in p.relative_to(dst).parts)
    assert outputs == sorted(r for r in report if r.startswith("good/"))
    for rel in outputs:
        decode_photo((dst / rel).read_bytes(), rel)
    mtimes = {rel: (dst / rel).stat().st_mtime_ns for rel in outputs}

    again = subprocess.run(dpe_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["counts"] == {"ok": 0, "skipped": len(GOOD), "error": len(REASONS)}  # only the poison redone
    assert {rel: (dst / rel).stat().st_mtime_ns for rel in outputs} == mtimes
    assert not list(dst.rglob(".dpe-tmp-*"))
    assert sha256_files(src) == originals
