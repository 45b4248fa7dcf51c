"""ingest_dataset end to end on the session's Prefect server and Dask workers."""

from __future__ import annotations

import hashlib
import shutil

from PIL import Image

from tests.tasks.helpers import ARCHIVE, CORRUPT, make_folder, read_jsonl


def test_ingest_validates_hashes_summarises_and_copies(dask_address, testdata, tmp_path):
    from flows.ingest import ingest_dataset
    from flows.params import IngestParams

    src = make_folder(tmp_path / "photos", testdata, ARCHIVE | CORRUPT)
    shutil.copyfile(src / "2004" / "canon_s40.jpg", src / "copy_of_canon_s40.jpg")
    dst = tmp_path / "dataset"
    params = IngestParams(source_url=str(src), dest_url=str(dst), copies=True, copy_size=128,
                          dask_address=dask_address, shard_size=5)
    state = ingest_dataset(params, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary["valid"], summary["invalid"], summary["duplicates"]) == (len(ARCHIVE) + 1, len(CORRUPT), 1)

    records = {r["path"]: r for r in read_jsonl(dst / "manifest.jsonl")}
    assert sorted(records) == sorted(list(ARCHIVE) + list(CORRUPT) + ["copy_of_canon_s40.jpg"])
    for rel in CORRUPT:
        assert records[rel]["status"] == "invalid" and rel in records[rel]["reason"]
    assert "too many pixels" in records["bad/bomb_800gpx.png"]["reason"]
    canon = records["2004/canon_s40.jpg"]
    assert canon["sha256"] == hashlib.sha256((src / "2004" / "canon_s40.jpg").read_bytes()).hexdigest()
    assert (canon["width"], canon["height"], canon["format"], canon["bit_depth"]) == (480, 360, "JPEG", 8)
    assert canon["exif"]["make"].startswith("Canon")
    assert records["copy_of_canon_s40.jpg"]["duplicate_of"] == "2004/canon_s40.jpg"
    gps = records["2004/trip/nikon_d2h_gps_xmp.jpg"]["exif"]
    assert gps["gps_latitude"] and gps["gps_longitude"]

    # Training copies: long side 128, upright (orientation 6 turned once), only for valid photos.
    turned = records["2011/iphone4s_orient6_lensinfo.jpg"]
    assert turned["orientation_applied"] == 6 and turned["height"] > turned["width"]
    with Image.open(dst / "copies" / turned["copy"]) as im:
        assert max(im.size) == 128 and im.height > im.width and not im.getexif()
    assert not any((dst / "copies" / rel).with_suffix(".jpg").exists() for rel in CORRUPT)

    again = ingest_dataset(params, return_state=True).result()
    assert again["reused"] == len(ARCHIVE) + 1 and again["shards"] == 1  # only the invalid files are re-checked
