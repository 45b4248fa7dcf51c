"""Listing, the destination's state, and the plan that skips done work (no Prefect, no cluster)."""

from __future__ import annotations

import json
import os

import pytest

from tasks.jsonl import dumps_jsonl, loads_jsonl, read_jsonl
from tasks.listing import list_files, matches, remove_stale_temp_files
from tasks.manifest import clear_records, load_state, manifest_url, merge_state, records_root, write_manifest
from tasks.plan import output_rel, plan
from tasks.sharding import lpt_shards
from tasks.writer import guarded_writer
from tests.tasks.helpers import ARCHIVE, make_folder


@pytest.fixture
def archive(tmp_path, testdata):
    root = make_folder(tmp_path / "archive", testdata, ARCHIVE)
    (root / "notes.txt").write_text("not a photo")
    (root / "2011" / "._iphone4s_gps.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "x.jpg").write_bytes((root / "2004" / "canon_s40.jpg").read_bytes())
    return root


def test_list_files_relative_paths_formats_and_hidden(archive):
    entries = list_files(str(archive))
    assert [e.rel for e in entries] == sorted(ARCHIVE)
    by_rel = {e.rel: e for e in entries}
    assert by_rel["scans/chelsea.png"].size == (archive / "scans" / "chelsea.png").stat().st_size
    assert by_rel["scans/chelsea.png"].url == str(archive / "scans" / "chelsea.png")
    assert all(e.version for e in entries)
    only_jpeg = list_files(str(archive), formats=["jpeg"])
    assert {e.rel for e in only_jpeg} == {r for r in ARCHIVE if r.endswith(".jpg")}
    with_hidden = list_files(str(archive), include_hidden=True)
    assert {"2011/._iphone4s_gps.jpg", ".thumbs/x.jpg"} <= {e.rel for e in with_hidden}


def test_patterns_match_names_at_any_depth():
    assert matches("2004/trip/a.jpg", ["*.jpg"], [])
    assert matches("2004/trip/a.jpg", ["2004/*"], [])
    assert not matches("2004/trip/a.jpg", ["2011/*"], [])
    assert not matches("2004/trip/a.jpg", ["*"], ["trip/*", "*/trip/*"])
    assert matches("IMG_1.JPG", ["IMG_*"], ["*.png"])


def test_list_files_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_files(str(tmp_path / "nope"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        list_files(str(tmp_path / "file.jpg"))


def _done_record(entry, settings, out_size, status="ok"):
    return {"input": entry.rel, "output": entry.rel, "status": status, "settings": settings,
            "input_size": entry.size, "input_version": entry.version, "output_size": out_size,
            "finished": "2026-01-01T00:00:00+00:00"}


def test_plan_skips_only_intact_recorded_outputs(archive):
    entries = list_files(str(archive))
    e = {x.rel: x for x in entries}
    settings = "s1"
    state = {
        "2004/canon_s40.jpg": _done_record(e["2004/canon_s40.jpg"], settings, 100),  # done, output intact
        "2011/iphone4s_gps.jpg": _done_record(e["2011/iphone4s_gps.jpg"], settings, 100),  # output truncated
        "2011/nokia_n70_iptc.jpg": _done_record(e["2011/nokia_n70_iptc.jpg"], settings, 100),  # output deleted
        "scans/chelsea.png": _done_record(e["scans/chelsea.png"], "old", 100),  # other model/settings
        "scans/hopper_6.webp": _done_record(e["scans/hopper_6.webp"], settings, 100, status="error"),
        "2015/panasonic_gf1_orient6.jpg": _done_record(e["2015/panasonic_gf1_orient6.jpg"], settings, 100)
        | {"input_size": 1},  # the original was replaced since
    }
    sizes = {"2004/canon_s40.jpg": 100, "2011/iphone4s_gps.jpg": 40, "scans/chelsea.png": 100,
             "scans/hopper_6.webp": 100, "2015/panasonic_gf1_orient6.jpg": 100,
             "2004/trip/nikon_d2h_gps_xmp.jpg": 77}  # an output nobody recorded (a killed run's last write)
    result = plan(entries, state, sizes, settings)
    assert [r["input"] for r in result.skipped] == ["2004/canon_s40.jpg"]
    why = {w.rel: w.why for w in result.todo}
    assert why == {
        "2004/trip/nikon_d2h_gps_xmp.jpg": "output not recorded",
        "2004/trip/nikon_e4600_icc_xmp.jpg": "new",
        "2011/iphone4s_gps.jpg": "output differs from the record",
        "2011/iphone4s_orient6_lensinfo.jpg": "new",
        "2011/nokia_n70_iptc.jpg": "output missing",
        "2015/panasonic_gf1_orient6.jpg": "input changed",
        "2015/pentax_k3ii_gps_icc_xmp.jpg": "new",
        "scans/chelsea.png": "settings changed",
        "scans/hopper_6.webp": "previous attempt failed",
    }
    assert result.total == len(entries)
    forced = plan(entries, state, sizes, settings, overwrite=True)
    assert not forced.skipped and len(forced.todo) == len(entries)


def test_output_names_and_collisions(archive, testdata):
    assert output_rel("a/b.png", "same") == "a/b.png"
    assert output_rel("a/b.png", "jpeg") == "a/b.jpg"
    assert output_rel("a/stereo.MPO", "same") == "a/stereo.jpg"
    assert output_rel("a/noext", "png") == "a/noext.png"
    make_folder(archive, testdata, {"scans/chelsea.jpg": "camera/canon_s40.jpg"})
    result = plan(list_files(str(archive)), {}, {}, "s", output_format="jpeg")
    # Both inputs of the collision are reported, each naming the other; neither is written.
    assert sorted((r["input"], r["status"]) for r in result.errors) == [("scans/chelsea.jpg", "error"),
                                                                         ("scans/chelsea.png", "error")]
    by_input = {r["input"]: r["reason"] for r in result.errors}
    assert "scans/chelsea.jpg" in by_input["scans/chelsea.png"] and "scans/chelsea.png" in by_input["scans/chelsea.jpg"]
    assert not any(w.rel.startswith("scans/chelsea") for w in result.todo)


def test_state_folds_in_records_of_an_interrupted_run(tmp_path):
    dest = str(tmp_path / "out")
    write_manifest(dest, {"a.jpg": {"input": "a.jpg", "status": "error", "finished": "1"}})
    guarded_writer(dest).write_url(f"{records_root(dest)}/run1/shard-00000.jsonl",
                                   dumps_jsonl([{"input": "a.jpg", "status": "ok", "finished": "2"},
                                                {"input": "b.jpg", "status": "ok", "finished": "2"}]))
    state = load_state(dest)
    assert state["a.jpg"]["status"] == "ok" and state["b.jpg"]["status"] == "ok"
    merged = merge_state(state, [{"input": "c.jpg", "status": "skipped"}, {"input": "b.jpg", "status": "error",
                                                                          "preview": "x"}])
    assert "c.jpg" not in merged and merged["b.jpg"] == {"input": "b.jpg", "status": "error"}
    write_manifest(dest, merged)
    clear_records(dest)
    assert not os.path.exists(records_root(dest))
    assert {r["input"] for r in read_jsonl(manifest_url(dest))} == {"a.jpg", "b.jpg"}


def test_jsonl_tolerates_only_a_torn_last_line():
    blob = dumps_jsonl([{"a": 1}, {"b": 2}]) + b'{"c": '
    assert list(loads_jsonl(blob)) == [{"a": 1}, {"b": 2}]
    with pytest.raises(ValueError):
        list(loads_jsonl(b'{"a": \n{"b": 2}\n'))
    assert json.loads(dumps_jsonl([{"x": 1}]).decode()) == {"x": 1}


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".dpe-tmp-123-abcd").write_bytes(b"partial")
    (tmp_path / "a" / "photo.jpg").write_bytes(b"keep")
    assert remove_stale_temp_files(str(tmp_path)) == ["a/.dpe-tmp-123-abcd"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["photo.jpg"]


def test_lpt_shards_balance_cost_and_keep_every_item_once():
    items = list(range(1, 41))
    shards = lpt_shards(items, 6, cost=lambda x: x)
    assert sorted(x for s in shards for x in s) == items
    totals = [sum(s) for s in shards]
    assert max(totals) - min(totals) <= max(items)
    assert totals == sorted(totals, reverse=True)
    assert all(s == sorted(s) for s in shards)
    assert lpt_shards([5], 4, cost=lambda x: x) == [[5]]
