"""Hostile sources through the whole pipeline (real `dpe` CLI or flow, the session's Prefect server, Dask workers
and moto S3): names that look like URLs, names that are not UTF-8, links in the source and in the destination,
inputs that would share an output, object keys that climb out of their folder.

Each asserts what a user cares about: the originals byte for byte, every input exactly once in the report with a
reason when it was not enhanced, outputs that decode under the names the report gives, nothing written outside
the destination.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import unicodedata

from PIL import Image

from dpe_core.io.places import artifact_key
from tests.conftest import REPO, dpe_command
from tests.reliability.fixtures_files import tiny_jpeg, tiny_png, tree_fingerprint, write
from tests.tasks.helpers import latest_report

NFC, NFD = unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg")
HOSTILE_OK = ["p.jpg::q.jpg", "a#b.jpg", "x?y.jpg", "new\nline.jpg", "bad\udcff.jpg"]
COLLIDING = ["Case.JPG", "case.jpg", NFC, NFD, "x.png", "x.jpg"]


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def _decodes(path_or_bytes) -> tuple[int, int]:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        image.load()
        return image.size


def test_hostile_names_links_and_collisions_through_dpe_enhance(cli_env, dask_address, model_ref, testdata,
                                                                 tmp_path):
    src, dst, elsewhere = tmp_path / "photos", tmp_path / "enhanced", tmp_path / "elsewhere"
    write(src, "2004/canon_s40.jpg", (testdata / "camera" / "canon_s40.jpg").read_bytes())
    write(src, "2004/trip/iphone.jpg", (testdata / "camera" / "iphone4s_gps.jpg").read_bytes())
    write(src, "2011/c.jpg", tiny_jpeg(99))
    for index, name in enumerate(HOSTILE_OK + COLLIDING):
        write(src, name, tiny_png(index) if name.endswith(".png") else tiny_jpeg(index))
    write(elsewhere, "b.jpg", tiny_jpeg(50))
    (src / "best.jpg").symlink_to("2004/canon_s40.jpg")  # inside the source: followed
    (src / "outside.jpg").symlink_to(elsewhere / "b.jpg")  # out of the source: not followed (policy)
    (src / "album").symlink_to(src / "2004")  # folder link: not followed (policy)
    (src / "broken.jpg").symlink_to(src / "gone.jpg")  # an error
    (src / "broken\udcfe.jpg").symlink_to(src / "gone.jpg")  # an error whose name is not UTF-8 (logged, reported)
    dst.mkdir()
    (dst / "2011").symlink_to(src / "2011")  # a pre-existing way into the originals
    originals, around = tree_fingerprint(src), tree_fingerprint(elsewhere)

    done = subprocess.run(dpe_command("enhance", str(src), str(dst), "--dask-address", dask_address, "--mode",
                                      "paper", "--output-format", "jpeg", "--model", model_ref, "--registry",
                                      str(tmp_path / "registry"), "--json"),
                          env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]  # some inputs failed: the documented code
    summary = json.loads(done.stdout)

    report = latest_report(dst)
    inputs = [r["input"] for r in report]
    ok = ["2004/canon_s40.jpg", "2004/trip/iphone.jpg", "best.jpg", *HOSTILE_OK]
    errors = [*COLLIDING, "broken.jpg", "broken\udcfe.jpg", "2011/c.jpg"]
    skipped = ["outside.jpg", "album/"]
    assert sorted(inputs) == sorted(ok + errors + skipped)  # every input exactly once
    by_input = {r["input"]: r for r in report}
    assert {r: by_input[r]["status"] for r in ok + errors + skipped} == (
        {r: "ok" for r in ok} | {r: "error" for r in errors} | {r: "skipped" for r in skipped})
    assert summary["counts"] == {"ok": len(ok), "skipped": len(skipped), "error": len(errors)}
    assert summary["not_read"] == {"skipped": 2, "error": 2}
    assert "surrogates not allowed" not in done.stderr and "UnicodeEncodeError" not in done.stderr
    assert any("broken\\xfe.jpg" in str(a.data) for a in _artifacts(artifact_key("enhance", str(dst))))

    for twin, other in (("Case.JPG", "case.jpg"), (NFC, NFD), ("x.png", "x.jpg")):
        assert other in by_input[twin]["reason"] and twin in by_input[other]["reason"]
    assert "broken symbolic link" in by_input["broken.jpg"]["reason"]
    assert "refusing to write" in by_input["2011/c.jpg"]["reason"]
    assert "symbolic link" in by_input["2011/c.jpg"]["reason"]
    assert "link policy" in by_input["outside.jpg"]["reason"] and "link policy" in by_input["album/"]["reason"]

    for rel in ok:  # written where the report says, under the same (odd) name, and it decodes
        record = by_input[rel]
        assert record["output"] == rel[: rel.rindex(".")] + ".jpg"
        path = os.path.join(os.fsencode(str(dst)), os.fsencode(record["output"]))
        assert os.path.getsize(path) == record["output_size"]
        with open(path, "rb") as handle:
            assert _decodes(handle.read())[0] > 0

    assert tree_fingerprint(src) == originals and tree_fingerprint(elsewhere) == around
    written = tree_fingerprint(dst)
    outputs = {k for k, v in written.items() if v not in ("dir",) and not k.startswith(".dpe")}
    assert outputs == {by_input[r]["output"] for r in ok} | {"2011"}  # the link itself, untouched
    assert written["2011"] == f"link -> {src / '2011'}"
    outside = {k for k in tree_fingerprint(tmp_path) if not k.startswith(("enhanced", "photos", "elsewhere",
                                                                          "dpe-home", "prefect-client-home"))}
    assert outside <= {"registry"}, outside  # nothing else appeared next to the destination


def test_object_keys_that_climb_out_of_their_folder_never_write_outside_the_destination(dask_address, model_ref,
                                                                                      s3_endpoint, testdata,
                                                                                      tmp_path):
    import boto3
    import fsspec

    from flows.enhance import enhance_archive
    from flows.params import EnhanceParams

    bucket = "reliability-keys"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    safe = {"ok.jpg": (testdata / "camera" / "canon_s40.jpg").read_bytes(), "a#b.jpg": tiny_jpeg(1),
            "x?y.jpg": tiny_jpeg(2), "p.jpg::q.jpg": tiny_jpeg(3)}
    climbing = ["../escape.jpg", "/double.jpg", "./dot.jpg", ".h/../up.jpg"]  # keys src/../escape.jpg, src//...
    for rel, data in safe.items():
        client.put_object(Bucket=bucket, Key=f"src/{rel}", Body=data)
    for index, rel in enumerate(climbing):
        client.put_object(Bucket=bucket, Key=f"src/{rel}", Body=tiny_jpeg(10 + index))

    def objects() -> dict[str, str]:
        listed = client.list_objects_v2(Bucket=bucket)["Contents"]
        return {o["Key"]: o["ETag"] for o in listed}

    before = objects()
    params = EnhanceParams(source_url=f"s3://{bucket}/src", dest_url=f"S3A://{bucket}/dst", include_hidden=True,
                           dask_address=dask_address, mode="paper", model=model_ref,
                           registry_url=str(tmp_path / "registry"))
    state = enhance_archive(params, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["counts"] == {"ok": len(safe), "skipped": 0, "error": len(climbing)}

    after = objects()
    assert {k: v for k, v in after.items() if k in before} == before  # originals untouched
    new = set(after) - set(before)
    assert new and all(k.startswith("dst/") for k in new), new  # nothing outside the destination
    assert {k for k in new if not k.startswith("dst/.dpe/")} == {f"dst/{rel}" for rel in safe}
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    report = [json.loads(line) for line in fs.cat_file(summary["report_url"]).decode().splitlines()]
    assert sorted(r["input"] for r in report) == sorted([*safe, *climbing])
    for record in report:
        if record["input"] in climbing:
            assert record["status"] == "error" and "cannot name a file inside a destination" in record["reason"]
        else:
            assert record["status"] == "ok"
            body = client.get_object(Bucket=bucket, Key=f"dst/{record['output']}")["Body"].read()
            assert len(body) == record["output_size"] and _decodes(body)[0] > 0


def test_ingest_copies_never_go_through_links_and_colliding_copies_are_reported(dask_address, tmp_path):
    from flows.ingest import ingest_dataset
    from flows.params import IngestParams

    src, ds, elsewhere = tmp_path / "photos", tmp_path / "dataset", tmp_path / "elsewhere"
    write(src, "2004/a.jpg", tiny_jpeg(1))
    write(src, "2004/b.jpg", tiny_jpeg(2))
    write(src, "scan.png", tiny_png(3))
    write(src, "scan.jpg", tiny_jpeg(4))  # both would be copies/scan.jpg
    write(src, "odd#name::x.jpg", tiny_jpeg(5))
    write(elsewhere, "c.jpg", tiny_jpeg(6))
    (src / "outside.jpg").symlink_to(elsewhere / "c.jpg")
    (src / "broken.jpg").symlink_to(src / "gone.jpg")
    (ds / "copies").mkdir(parents=True)
    (ds / "copies" / "2004").symlink_to(src / "2004")  # a way into the originals
    originals, around = tree_fingerprint(src), tree_fingerprint(elsewhere)

    params = IngestParams(source_url=str(src), dest_url=str(ds), copies=True, copy_size=32,
                          dask_address=dask_address, shard_size=4)
    state = ingest_dataset(params, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    records = {r["path"]: r for r in (json.loads(line) for line in (ds / "manifest.jsonl").read_text().splitlines())}
    assert sorted(records) == sorted(["2004/a.jpg", "2004/b.jpg", "scan.png", "scan.jpg", "odd#name::x.jpg",
                                      "outside.jpg", "broken.jpg"])  # every file exactly once
    status = {path: r["status"] for path, r in records.items()}
    assert status == {"2004/a.jpg": "invalid", "2004/b.jpg": "invalid", "scan.png": "invalid", "scan.jpg": "invalid",
                      "odd#name::x.jpg": "valid", "outside.jpg": "skipped", "broken.jpg": "invalid"}
    assert "symbolic link" in records["2004/a.jpg"]["reason"] and "refusing to write" in records["2004/a.jpg"]["reason"]
    assert "scan.jpg" in records["scan.png"]["reason"] and "scan.png" in records["scan.jpg"]["reason"]
    assert (summary["valid"], summary["invalid"], summary["skipped"]) == (1, 5, 1)
    assert _decodes(ds / "copies" / "odd#name::x.jpg")[0] == 32
    assert tree_fingerprint(src) == originals and tree_fingerprint(elsewhere) == around
    assert set(tree_fingerprint(ds)) == {"copies", "copies/2004", "copies/odd#name::x.jpg", "manifest.jsonl",
                                         "summary.json"}
