"""Fast checks of the pieces that keep originals safe: identity of places, the guarded writer, the listing's link
policy, and the plan's refusal of unsafe or colliding names (no Prefect, no cluster)."""

from __future__ import annotations

import os
import unicodedata

import fsspec
import pytest

from dpe_core.io.places import DestinationError, Place, check_destinations, relation
from tasks.listing import FileEntry, read_input, scan
from tasks.plan import plan
from tasks.writer import GuardedWriter, WriteRefused
from tests.reliability.fixtures_files import tiny_jpeg, tree_fingerprint, write


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "photos"
    write(root, "2004/a.jpg", tiny_jpeg(1))
    write(root, "2004/trip/b.jpg", tiny_jpeg(2))
    return root


def test_every_spelling_of_the_source_is_the_same_place(src, tmp_path, monkeypatch):
    (tmp_path / "link").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    source = Place.parse(str(src))
    spellings = [str(tmp_path / "link"), "/" + str(src), f"{src}/../photos", f"file://{src}", f"local://{src}",
                 f"simplecache::file://{src}", "./photos/../photos", "link/", f"FILE://{src}"]
    for spelling in spellings:
        assert relation(source, Place.parse(spelling)) == "same", spelling
        with pytest.raises(DestinationError, match="is the source"):
            check_destinations(str(src), [("destination", spelling)])


def test_inside_and_containing_destinations_are_refused_through_links(src, tmp_path):
    (tmp_path / "out").symlink_to(src / "2004")  # lexically apart, really inside the source
    cases = {str(src / "enhanced"): "lies inside the source", str(tmp_path / "out" / "x"): "lies inside the source",
             str(tmp_path): "source .* lies inside the destination", "/": "source .* lies inside the destination"}
    for dest, message in cases.items():
        with pytest.raises(DestinationError, match=message):
            check_destinations(str(src), [("destination", dest)])
    check_destinations(str(src), [("destination", str(tmp_path / "photos-enhanced"))])  # a sibling is fine


def test_object_store_spellings_compare_by_protocol_family_and_normalised_key():
    def rel(a: str, b: str):
        return relation(Place.parse(a, resolve=False), Place.parse(b, resolve=False))

    assert rel("s3://b/archive", "s3a://b/archive/") == "same"
    assert rel("S3://b/archive", "s3://b//archive") == "same"
    assert rel("s3://b/archive", "s3://b/archive/x/../") == "same"
    assert rel("s3://b/archive", "s3://b/archive/enhanced") == "inside"
    assert rel("s3://b/archive/2004", "s3a://b/archive") == "contains"
    assert rel("s3://b/archive", "s3://b/archive-enhanced") is None
    assert rel("s3://b/archive", "memory://b/archive") is None  # another filesystem
    assert rel("memory://src", "memory:///src/./out") == "inside"


def test_a_link_in_the_destination_is_never_followed_into_the_originals(src, tmp_path):
    before = tree_fingerprint(src)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "2004").symlink_to(src / "2004")  # a pre-existing DST/2004 -> SRC/2004
    (dest / "ok").mkdir()
    (dest / "ok" / "deep").symlink_to(src)
    writer = GuardedWriter(str(dest), [str(src)])
    for rel in ("2004/a.jpg", "2004/new.jpg", "ok/deep/2004/a.jpg"):
        with pytest.raises(WriteRefused, match="refusing to write .* because .* is a symbolic link"):
            writer.write(rel, b"enhanced")
    writer.write("ok/fresh.jpg", b"enhanced")
    assert (dest / "ok" / "fresh.jpg").read_bytes() == b"enhanced"
    assert tree_fingerprint(src) == before
    # Even a writer that knows nothing of the source does not follow the link.
    with pytest.raises(WriteRefused):
        GuardedWriter(str(dest)).write("2004/a.jpg", b"x")
    assert tree_fingerprint(src) == before


def test_the_writer_refuses_the_source_and_the_input_itself(src, tmp_path):
    before = tree_fingerprint(src)
    source = Place.parse(str(src))
    with pytest.raises(WriteRefused, match="is the source"):
        GuardedWriter(str(tmp_path / "photos"), [str(src)]).write("2004/a.jpg", b"x")
    with pytest.raises(WriteRefused, match="lies inside the source"):
        GuardedWriter(str(src / "out"), [str(src)]).write("a.jpg", b"x")
    (tmp_path / "alias").symlink_to(src)
    with pytest.raises(WriteRefused, match="is the input .* itself"):  # no source told: the input is still known
        GuardedWriter(str(tmp_path / "alias")).write("2004/a.jpg", b"x", input_rel="2004/a.jpg", source=source)
    os.link(src / "2004" / "a.jpg", tmp_path / "hardlink.jpg")  # the same file under another name
    with pytest.raises(WriteRefused, match="is the input file itself"):
        GuardedWriter(str(tmp_path)).write("hardlink.jpg", b"x", input_rel="2004/a.jpg", source=source)
    assert tree_fingerprint(src) == before


def test_a_destination_replaced_by_a_link_mid_run_is_refused(src, tmp_path):
    """A worker keeps its writer across shards: the destination turned into a link to the source afterwards."""
    before = tree_fingerprint(src)
    dest = tmp_path / "dest"
    writer, unaware = GuardedWriter(str(dest), [str(src)]), GuardedWriter(str(dest))
    writer.write("2004/a.jpg", b"first")
    unaware.write("2004/b.jpg", b"first")
    for name in ("a.jpg", "b.jpg"):
        (dest / "2004" / name).unlink()
    (dest / "2004").rmdir()
    dest.rmdir()
    dest.symlink_to(src)
    with pytest.raises(WriteRefused, match="is the source"):
        writer.write("2004/a.jpg", b"second")
    with pytest.raises(WriteRefused, match="has become a symbolic link"):  # even without knowing the source
        unaware.write("2004/a.jpg", b"second")
    assert tree_fingerprint(src) == before


@pytest.mark.parametrize("rel", ["../escape.jpg", "a/../../escape.jpg", "/etc/x.jpg", "a//b.jpg", "./a.jpg", "",
                                 "a/./b.jpg", "a\x00b.jpg"])
def test_names_that_leave_the_destination_are_refused_on_disk_and_in_memory(rel, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(WriteRefused, match="refusing to write"):
        GuardedWriter(str(dest)).write(rel, b"x")
    assert not (tmp_path / "escape.jpg").exists() and not dest.exists()
    memory = fsspec.filesystem("memory")
    before = set(memory.find("/", detail=False))
    with pytest.raises(WriteRefused):
        GuardedWriter("memory://guard-test/dest").write(rel, b"x")
    assert set(memory.find("/", detail=False)) == before


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    writer = GuardedWriter(str(tmp_path / "dest"))
    writer.write("a/b/c.jpg", b"one")
    writer.write("a/b/c.jpg", b"two")
    target = tmp_path / "dest" / "a" / "b" / "c.jpg"
    assert target.read_bytes() == b"two"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in (tmp_path / "dest" / "a" / "b").iterdir()] == ["c.jpg"]


def test_links_in_the_source_follow_the_stated_policy_and_every_one_is_reported(src, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "b.jpg", tiny_jpeg(3))
    (src / "best.jpg").symlink_to("2004/a.jpg")  # a link to a photo inside the source: read under its name
    (src / "outside.jpg").symlink_to(elsewhere / "b.jpg")  # leaves the source: not followed
    (src / "album").symlink_to(src / "2004")  # a folder link: not followed
    (src / "broken.jpg").symlink_to(src / "gone.jpg")
    (src / "loop1.jpg").symlink_to(src / "loop2.jpg")
    (src / "loop2.jpg").symlink_to(src / "loop1.jpg")
    os.mkfifo(src / "pipe.jpg")  # would block a reader forever
    (src / ".hidden-broken.jpg").symlink_to(src / "nothing")  # hidden: not an input, not reported
    (src / "notes.txt").symlink_to(src / "nothing")  # not a photo: not reported
    listing = scan(str(src))
    assert [e.rel for e in listing.entries] == ["2004/a.jpg", "2004/trip/b.jpg", "best.jpg"]
    assert read_input(Place.parse(str(src)), "best.jpg") == (src / "2004" / "a.jpg").read_bytes()
    left = {r["input"]: (r["status"], r["reason"]) for r in listing.left_out}
    assert set(left) == {"outside.jpg", "album/", "broken.jpg", "loop1.jpg", "loop2.jpg", "pipe.jpg"}
    assert left["outside.jpg"][0] == "skipped" and "outside the source" in left["outside.jpg"][1]
    assert left["album/"][0] == "skipped" and "link to a folder" in left["album/"][1]
    assert left["broken.jpg"][0] == "error" and "broken symbolic link" in left["broken.jpg"][1]
    assert left["loop1.jpg"] == ("error", "loop1.jpg: symbolic link loop")
    assert left["pipe.jpg"][0] == "skipped" and "not a regular file" in left["pipe.jpg"][1]
    result = plan(listing.entries, {}, {}, "s", left_out=listing.left_out)
    assert result.total == 9 and sorted(r["input"] for r in result.records + [w.to_dict() | {"input": w.rel}
                                                                               for w in result.todo]) == sorted(
        [e.rel for e in listing.entries] + list(left))


def test_odd_object_keys_are_errors_whatever_include_hidden_says():
    memory = fsspec.filesystem("memory")
    for key in ("/keys/src/ok.jpg", "/keys/src/../escape.jpg", "/keys/src//double.jpg", "/keys/src/./dot.jpg",
                "/keys/src/.h/../up.jpg", "/keys/src/a#b.jpg", "/keys/src/p.jpg::q.jpg", "/keys/src/x?y.jpg"):
        memory.pipe_file(key, tiny_jpeg(len(key)))
    try:
        for hidden in (False, True):
            listing = scan("memory://keys/src", include_hidden=hidden)
            assert [e.rel for e in listing.entries] == ["a#b.jpg", "ok.jpg", "p.jpg::q.jpg", "x?y.jpg"]
            assert sorted(r["input"] for r in listing.left_out) == ["../escape.jpg", "./dot.jpg", ".h/../up.jpg",
                                                                     "/double.jpg"]
            assert {r["status"] for r in listing.left_out} == {"error"}
        source = Place.parse("memory://keys/src")
        for entry in listing.entries:  # each read from where it is: the name is joined, never parsed
            assert read_input(source, entry.rel) == memory.cat_file(f"/keys/src/{entry.rel}")
    finally:
        memory.rm("/keys", recursive=True)


HOSTILE = ["p.jpg::q.jpg", "a#b.jpg", "x?y.jpg", "new\nline.jpg", "tab\there.jpg", "bad\udcff.jpg", "50%20.jpg",
           "s3:/x.jpg", "~home.jpg", "file:.jpg"]


def test_hostile_file_names_are_read_and_named_exactly(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    for index, name in enumerate(HOSTILE):
        write(src, name if "/" not in name else name.replace("/", "/d/"), tiny_jpeg(index))
    listing = scan(str(src))
    names = [e.rel for e in listing.entries]
    assert len(names) == len(HOSTILE) and not listing.left_out
    source = Place.parse(str(src))
    writer = GuardedWriter(str(dest), [str(src)])
    for entry in listing.entries:
        data = read_input(source, entry.rel)
        assert data == open(os.path.join(os.fsencode(str(src)), os.fsencode(entry.rel)), "rb").read()
        writer.write(entry.rel, data[::-1], input_rel=entry.rel, source=source)
    assert tree_fingerprint(dest).keys() == tree_fingerprint(src).keys()


def _entries(*rels: str) -> list[FileEntry]:
    return [FileEntry(rel, f"/src/{rel}", 100, "v") for rel in rels]


def test_inputs_that_would_share_an_output_are_all_reported_and_none_is_written():
    nfc, nfd = unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg")
    entries = _entries("A.JPG", "a.jpg", nfc, nfd, "x.png", "x.jpg", "Trip/c.jpg", "trip/d.jpg", "solo.jpg")
    result = plan(entries, {}, {}, "s", output_format="jpeg")
    errors = {r["input"]: r["reason"] for r in result.errors}
    assert set(errors) == {"A.JPG", "a.jpg", nfc, nfd, "x.png", "x.jpg"}
    assert "a.jpg" in errors["A.JPG"] and "A.JPG" in errors["a.jpg"]
    assert nfd in errors[nfc] and nfc in errors[nfd]
    assert "x.jpg" in errors["x.png"] and "x.png" in errors["x.jpg"]
    assert sorted(w.rel for w in result.todo) == ["Trip/c.jpg", "solo.jpg", "trip/d.jpg"]  # one folder, two files
    same = plan(_entries("x.png", "x.jpg"), {}, {}, "s")  # without a format change they do not collide
    assert not same.errors and len(same.todo) == 2


def test_a_file_that_is_another_outputs_folder_and_bookkeeping_names_are_refused():
    entries = _entries("a.jpg", "A.JPG/b.jpg", ".dpe/manifest.jpg", ".DPE/x.jpg", ".dpe-tmp-1.jpg", "ok.jpg")
    result = plan(entries, {}, {}, "s")
    errors = {r["input"]: r["reason"] for r in result.errors}
    assert set(errors) == {"a.jpg", "A.JPG/b.jpg", ".dpe/manifest.jpg", ".DPE/x.jpg", ".dpe-tmp-1.jpg"}
    assert "bookkeeping" in errors[".dpe/manifest.jpg"] and "temp files" in errors[".dpe-tmp-1.jpg"]
    assert [w.rel for w in result.todo] == ["ok.jpg"]
