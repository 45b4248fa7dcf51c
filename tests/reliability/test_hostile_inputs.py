"""Hostile and huge inputs through the pipeline: a 64 GB sparse `.jpg`, PNGs whose metadata inflates to 200 MB -
1 GB, an oversized EXIF. Each costs its own photo only: a per-file error naming the file, what is too large and
the limit; no MemoryError with an empty reason, no worker killed for memory, the other photos enhanced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.core.bombs import big_exif_png, exif_text_bomb, icc_bomb, sparse_file, xmp_bomb
from tests.tasks.helpers import latest_report

GOOD = {"good/canon_s40.jpg": "camera/canon_s40.jpg", "good/iphone4s_gps.jpg": "camera/iphone4s_gps.jpg"}
EXPECTED = {
    "huge/sparse_64gb.jpg": ["huge/sparse_64gb.jpg: file too large: 64.0 GiB (68719476736 bytes) exceeds the input "
                             "limit of 1.0 GiB", "DPE_MAX_INPUT_BYTES"],
    "bombs/xmp_1gb.png": ["bombs/xmp_1gb.png: metadata too large: PNG iTXt chunk 'XML:com.adobe.xmp' (XMP) "
                          "inflates to more than the limit of 16.0 MiB", "refused before inflating it"],
    "bombs/exif_text_200mb.png": ["metadata too large: PNG zTXt chunk 'Raw profile type exif'", "16.0 MiB"],
    "bombs/icc_200mb.png": ["metadata too large: PNG iCCP chunk 'ICC Profile' (ICC profile) inflates"],
    "bombs/exif_20mb.png": ["metadata too large: PNG eXIf chunk (EXIF) is 20.0 MiB"],
}


def _hostile_folder(root: Path, testdata: Path) -> Path:
    for rel, src in GOOD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((testdata / src).read_bytes())
    (root / "bombs").mkdir(parents=True)
    (root / "huge").mkdir(parents=True)
    sparse_file(root / "huge/sparse_64gb.jpg")
    (root / "bombs/xmp_1gb.png").write_bytes(xmp_bomb())
    (root / "bombs/exif_text_200mb.png").write_bytes(exif_text_bomb())
    (root / "bombs/icc_200mb.png").write_bytes(icc_bomb())
    (root / "bombs/exif_20mb.png").write_bytes(big_exif_png())
    return root


def _fingerprint(root: Path) -> dict[str, str]:
    """sha256 of each file, (size, mtime) of sparse ones (hashing 64 GB of zeros would take minutes)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        rel = path.relative_to(root).as_posix()
        out[rel] = f"{st.st_size}:{st.st_mtime_ns}" if st.st_size > 1 << 30 else \
            hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _check_records(by_input: dict[str, dict]) -> None:
    assert sorted(by_input) == sorted(set(GOOD) | set(EXPECTED))  # every input exactly once
    for rel in GOOD:
        assert by_input[rel]["status"] == "ok", by_input[rel]
    for rel, words in EXPECTED.items():
        record = by_input[rel]
        assert record["status"] == "error", record
        for word in words:
            assert word in record["reason"], (word, record["reason"])


class Identity:
    def enhance(self, photo, mode="paper", **kwargs):
        return photo.with_pixels(photo.pixels.copy())


@pytest.mark.parametrize("decode_timeout_s", [0, 60], ids=["decode-in-worker", "decoder-process"])
def test_shard_refuses_huge_and_bomb_inputs_and_enhances_the_rest(tmp_path, testdata, decode_timeout_s):
    from dpe_core.io import decode_photo
    from tasks.enhance import EnhanceJob, Shard, process_shard
    from tasks.plan import WorkItem

    src = _hostile_folder(tmp_path / "src", testdata)
    before = _fingerprint(src)
    dest = tmp_path / "out"
    items = [WorkItem(rel, str(src / rel), (src / rel).stat().st_size, "v", rel).to_dict() for rel in before]
    job = EnhanceJob(model_uri="stub", dest_url=str(dest), records_url=str(dest / ".dpe/records/r"),
                     source_url=str(src), mode="paper", decode_timeout_s=decode_timeout_s)
    result = process_shard(Shard(index=0, items=items), job, enhancer_factory=Identity)
    by_input = {r["input"]: r for r in result.records}
    _check_records(by_input)
    for rel in GOOD:
        decode_photo((dest / rel).read_bytes(), rel)
    assert not (dest / "huge").exists() and not (dest / "bombs").exists()
    assert _fingerprint(src) == before


def test_ingest_records_huge_and_bomb_inputs_as_invalid(tmp_path, testdata):
    from tasks.ingest import IngestJob, ingest_one
    from tasks.listing import FileEntry

    src = _hostile_folder(tmp_path / "src", testdata)
    job = IngestJob(source_url=str(src))
    records = {rel: ingest_one(FileEntry(rel, str(src / rel), (src / rel).stat().st_size), job)
               for rel in _fingerprint(src)}
    for rel in GOOD:
        assert records[rel]["status"] == "valid", records[rel]
    for rel, words in EXPECTED.items():
        assert records[rel]["status"] == "invalid" and words[0] in records[rel]["reason"], records[rel]
    assert "sha256" not in records["huge/sparse_64gb.jpg"]  # never read


def _worker_peak_rss(dask_address: str, reset: bool = False) -> dict[str, int]:
    """Peak RSS (VmHWM, bytes) of each worker since its last reset; reset=True starts a new peak (Linux
    clear_refs 5), so a test measures its own run, not what earlier tests (or a kernel compile at worker
    warm-up) left as the high-water mark of the session's long-lived workers."""
    from distributed import Client

    def peak() -> int:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib * 1024

    with Client(dask_address, timeout=30) as client:
        return client.run(peak)


def test_enhance_flow_with_hostile_inputs_keeps_workers_alive_and_bounded(tmp_path, testdata, dask_address):
    """The real flow on the session's Prefect server and Dask workers, decoding inside the workers: the 1 GB XMP
    bomb used to take 4.2 GB there (and write a 1 GB output); now the workers' peak stays far below."""
    from dpe_core.io import decode_photo
    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    src = _hostile_folder(tmp_path / "src", testdata)
    before = _fingerprint(src)
    dst = tmp_path / "dst"
    params = EnhanceParams(source_url=str(src), dest_url=str(dst), dask_address=dask_address, shard_size=4,
                           mode="paper", model="default", registry_url=str(tmp_path / "registry"), previews=0,
                           decode_timeout_s=0)
    _worker_peak_rss(dask_address, reset=True)
    state = enhance_archive(params, return_state=True)
    assert state.is_completed(), state.message
    report = latest_report(dst)
    by_input = {r["input"]: r for r in report}
    assert len(report) == len(by_input)
    _check_records(by_input)
    for rel in GOOD:
        decode_photo((dst / rel).read_bytes(), rel)
    peaks = _worker_peak_rss(dask_address)
    print("dask worker peak RSS (MiB):", {k: v >> 20 for k, v in peaks.items()})
    assert max(peaks.values()) < 1.5 * (1 << 30), peaks  # model + photos (~0.6 GB); the bomb inflated: > 4 GB
    assert _fingerprint(src) == before
    assert sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) < 50 * (1 << 20)  # no 1 GB outputs
    assert not os.path.exists(dst / "huge")
