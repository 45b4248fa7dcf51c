"""The enhance shard's behaviour without a cluster: per-file records, atomic writes, failures as records."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.enhance import EnhanceJob, Shard, process_shard
from tasks.jsonl import read_jsonl
from tasks.listing import list_files
from tasks.plan import plan
from tests.tasks.helpers import ARCHIVE, CORRUPT, make_folder, sha256_files


def _shard(src: Path, dest: Path, previews: int = 0, output_format: str = "same") -> Shard:
    todo = plan(list_files(str(src)), {}, {}, "s", output_format).todo
    return Shard(index=7, items=[w.to_dict() for w in todo], previews=previews)


def _job(dest: Path, model: str, **kw) -> EnhanceJob:
    return EnhanceJob(model_uri=model, model_id="m", mode=kw.pop("mode", "paper"), dest_url=str(dest),
                      records_url=str(dest / ".dpe" / "records" / "run"), settings="s", **kw)


def test_shard_writes_outputs_and_one_record_per_file_even_when_files_fail(tmp_path, testdata, model_ref):
    files = {k: v for k, v in ARCHIVE.items() if k.startswith(("2004/", "scans/"))} | CORRUPT
    src = make_folder(tmp_path / "src", testdata, files)
    originals = sha256_files(src)
    dest = tmp_path / "out"
    result = process_shard(_shard(src, dest, previews=2), _job(dest, model_ref, torch_threads=1))

    assert sorted(r["input"] for r in result.records) == sorted(files)
    by_input = {r["input"]: r for r in result.records}
    for rel in CORRUPT:
        assert by_input[rel]["status"] == "error" and rel in by_input[rel]["reason"]
        assert not (dest / rel).exists()
    for rel in set(files) - set(CORRUPT):
        record = by_input[rel]
        assert record["status"] == "ok", record
        assert record["output_size"] == (dest / rel).stat().st_size
        assert record["shard"] == 7 and record["model"] == "m" and record["settings"] == "s"
    assert result.counts == {"ok": len(files) - len(CORRUPT), "error": len(CORRUPT)}
    assert len(result.previews) == 2 and result.previews[0]["before"] and result.previews[0]["after"]
    assert result.started <= result.first_output <= result.finished  # the run's "time to first output"
    # The shard's records are on storage as soon as it ends (the source of truth if the flow dies).
    saved = read_jsonl(str(dest / ".dpe" / "records" / "run" / "shard-00007.jsonl"))
    assert sorted(r["input"] for r in saved) == sorted(files)
    assert not [p for p in dest.rglob("*") if p.name.startswith(".dpe-tmp-")]
    assert sha256_files(src) == originals


def test_output_format_conversion_names_and_encodes_the_new_format(tmp_path, testdata, model_ref):
    src = make_folder(tmp_path / "src", testdata, {"a/chelsea.png": "natural/chelsea.png",
                                                   "stereo.mpo": "camera/nintendo3ds_stereo.mpo"})
    dest = tmp_path / "out"
    result = process_shard(_shard(src, dest, output_format="jpeg"), _job(dest, model_ref, output_format="jpeg"))
    assert {r["output"] for r in result.records} == {"a/chelsea.jpg", "stereo.jpg"}
    assert (dest / "a" / "chelsea.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    same = process_shard(_shard(src, tmp_path / "same"), _job(tmp_path / "same", model_ref))
    assert {r["output"] for r in same.records} == {"a/chelsea.png", "stereo.jpg"}  # MPO is written as JPEG
    assert (tmp_path / "same" / "a" / "chelsea.png").read_bytes()[:4] == b"\x89PNG"


def test_unloadable_model_fails_each_file_with_the_reason(tmp_path, testdata):
    src = make_folder(tmp_path / "src", testdata, {"x.jpg": "camera/canon_s40.jpg", "y.jpg": "camera/iphone4s_gps.jpg"})
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")
    (tmp_path / "model.json").write_text("{}")
    dest = tmp_path / "out"
    result = process_shard(_shard(src, dest), _job(dest, str(tmp_path / "model.safetensors")))
    assert {r["status"] for r in result.records} == {"error"}
    assert all("could not be loaded" in r["reason"] for r in result.records)
    assert not (dest / "x.jpg").exists()


def test_a_write_that_fails_is_a_per_file_error_and_leaves_no_partial_file(tmp_path, testdata, model_ref):
    if os.geteuid() == 0:
        blocked_parent = True  # root ignores permissions: block the folder with a file instead
    else:
        blocked_parent = False
    src = make_folder(tmp_path / "src", testdata, {"ok/a.jpg": "camera/canon_s40.jpg",
                                                   "blocked/b.jpg": "camera/iphone4s_gps.jpg"})
    dest = tmp_path / "out"
    dest.mkdir()
    if blocked_parent:
        (dest / "blocked").write_bytes(b"a file where the output folder should be")
    else:
        (dest / "blocked").mkdir()
        os.chmod(dest / "blocked", 0o500)
    result = process_shard(_shard(src, dest), _job(dest, model_ref))
    by_input = {r["input"]: r for r in result.records}
    assert by_input["ok/a.jpg"]["status"] == "ok"
    assert by_input["blocked/b.jpg"]["status"] == "error" and "Error" in by_input["blocked/b.jpg"]["reason"]
    assert not [p for p in dest.rglob("*") if p.name.startswith(".dpe-tmp-")]


def test_pipelined_and_sequential_shards_give_the_same_bytes(tmp_path, testdata, model_ref):
    files = {k: v for k, v in ARCHIVE.items() if k.startswith("2011/")}
    src = make_folder(tmp_path / "src", testdata, files)
    variants = {"sequential": {"prefetch": False}, "io-threads": {"prefetch": True, "overlap_cpu": False},
                "decode-beside-model": {"prefetch": True, "overlap_cpu": True, "io_threads": 3},
                "decode-ahead": {"prefetch": True, "overlap_cpu": False, "decode_ahead": True, "io_threads": 1}}
    hashes = {}
    for name, options in variants.items():
        out = tmp_path / name
        # fp32 throughout: bf16="auto" computes its first images both ways, which a first variant would get alone
        result = process_shard(_shard(src, out), _job(out, model_ref, mode="full", bf16="off", **options))
        assert [r["status"] for r in result.records] == ["ok"] * len(files)
        hashes[name] = sha256_files(out / "2011")
    assert hashes["sequential"] == hashes["io-threads"] == hashes["decode-beside-model"] == hashes["decode-ahead"]


def test_decode_ahead_never_decodes_beside_the_model_and_decodes_beside_the_encode(tmp_path, testdata,
                                                                                   monkeypatch):
    """decode_ahead (CPU workers whose torch takes every core): the next photo is decoded only once the model is
    done with the current one, and then beside its encode."""
    import threading
    import time

    import tasks.enhance as te
    from dpe_core.io import decode_photo

    events: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def timed(kind, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    events.append((kind, start, time.perf_counter()))
        return run

    def slow_decode(data, name, **kwargs):
        time.sleep(0.05)  # long enough to be seen beside an encode
        return decode_photo(data, name, **kwargs)

    real_encode = te._encode

    def slow_encode(*args, **kwargs):
        # A bare encode of this photo takes ~6 ms: on a loaded CI machine the decode thread's start can miss it.
        time.sleep(0.05)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(te, "_photo_decoder", lambda job: timed("decode", slow_decode))
    monkeypatch.setattr(te, "_encode", timed("encode", slow_encode))

    class SlowIdentity:
        def enhance(self, photo, mode="paper"):
            time.sleep(0.05)
            return photo.with_pixels(photo.pixels.copy())

    model = SlowIdentity()
    model.enhance = timed("model", model.enhance)
    files = {f"a/{i}.jpg": "natural/kpa_jesper.jpg" for i in range(6)}
    src = make_folder(tmp_path / "src", testdata, files)
    out = tmp_path / "out"
    job = _job(out, "unused", prefetch=True, overlap_cpu=False, decode_ahead=True, io_threads=1)
    result = process_shard(_shard(src, out), job, enhancer_factory=lambda: model)
    assert [r["status"] for r in result.records] == ["ok"] * 6

    def overlap(a, b):
        return min(a[2], b[2]) - max(a[1], b[1])

    decodes = [e for e in events if e[0] == "decode"]
    assert len(decodes) == 6
    for m in (e for e in events if e[0] == "model"):
        assert all(overlap(m, d) <= 0 for d in decodes), events
    # Each next photo's decode started before the current photo's encode ended: they ran side by side.
    beside = sum(any(overlap(d, e) > 0 for e in events if e[0] == "encode") for d in decodes)
    assert beside >= 4, events


def test_strength_reaches_the_outputs(tmp_path, testdata, model_ref):
    """EnhanceJob.strength goes to the Enhancer: 0 writes the original's pixels, 0.5 lies halfway, 1 is the model."""
    import numpy as np
    from PIL import Image

    src = make_folder(tmp_path / "src", testdata, {"a/chelsea.png": "natural/chelsea.png"})  # lossless output

    def pixels(strength: float) -> np.ndarray:
        out = tmp_path / f"s{strength}"
        result = process_shard(_shard(src, out), _job(out, model_ref, mode="full", strength=strength))
        assert [r["status"] for r in result.records] == ["ok"], result.records
        with Image.open(out / "a" / "chelsea.png") as im:
            return np.asarray(im.convert("RGB")).astype(np.int32)

    with Image.open(src / "a" / "chelsea.png") as im:
        original = np.asarray(im.convert("RGB")).astype(np.int32)
    full, half, none = pixels(1.0), pixels(0.5), pixels(0.0)
    assert np.abs(none - original).max() <= 1  # the original, within 8-bit rounding
    assert np.abs(full - original).mean() > 1  # the model changes this photo
    assert np.abs(half - (full + original) / 2).mean() < 0.75  # halfway (clipping and rounding aside)


def test_decoder_processes_started_at_warm_up_serve_the_first_photos(tmp_path, testdata):
    import tasks.decoder_process as dp
    from tasks.models import prestart_decoders

    fresh = dp.DecoderPool()
    original, dp._POOL = dp._POOL, fresh
    try:
        assert prestart_decoders(1) == 1 and prestart_decoders(1) == 0  # the second call finds it idle
        (pid,) = fresh.pids()
        photo = dp.decode_isolated((testdata / "natural" / "coffee.png").read_bytes(), "coffee.png", 60.0)
        assert photo.pixels.shape == (400, 600, 3)
        assert fresh.pids() == [pid] and fresh.started == 1  # decoded by the warm child, none started on the way
    finally:
        dp._POOL = original
        fresh.close()
