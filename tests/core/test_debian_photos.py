"""benchmarks/debian_photos.py reads photos out of compiled Qt resource files (GCompris keeps its photos there)."""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "debian_photos.py"


def load_script():
    spec = importlib.util.spec_from_file_location("debian_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_resources(tree: dict, version: int = 2) -> bytes:
    """A resource file laid out as Qt's rcc writes it: nodes breadth-first so that each directory's children are
    contiguous, names as (length, hash, UTF-16BE), data entries length-prefixed; a value (bytes, True) is stored
    zlib-compressed behind its uncompressed length."""
    order, first_child = [("", tree)], {}
    for index, (_, value) in enumerate(order):  # grows while it is walked: breadth-first
        if isinstance(value, dict):
            first_child[index] = len(order)
            order.extend(value.items())
    names, data, nodes = bytearray(), bytearray(), []
    for index, (name, value) in enumerate(order):
        name_at = len(names) if index else 0
        if index:
            names.extend(struct.pack(">HI", len(name), 0) + name.encode("utf-16-be"))
        if isinstance(value, dict):
            nodes.append(struct.pack(">IHII", name_at, 2, len(value), first_child[index]))
            continue
        payload, compressed = value if isinstance(value, tuple) else (value, False)
        stored = struct.pack(">I", len(payload)) + zlib.compress(payload) if compressed else payload
        nodes.append(struct.pack(">IHHHI", name_at, int(compressed), 0, 0, len(data)))
        data.extend(struct.pack(">I", len(stored)) + stored)
    padding = b"\0" * (8 if version >= 2 else 0)  # v2 adds each node's modification time
    tree_bytes = b"".join(node + padding for node in nodes)
    tree_at = 20
    data_at = tree_at + len(tree_bytes)
    names_at = data_at + len(data)
    return b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at) + tree_bytes + bytes(data) + bytes(names)


def webp_photo(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "WEBP", lossless=True)
    return out.getvalue()


@pytest.mark.parametrize("version", [1, 2])
def test_photos_come_out_of_a_qt_resource_file_whole_and_under_their_paths(version):
    script = load_script()
    red, green = webp_photo((200, 30, 20)), webp_photo((20, 180, 40))
    blob = compiled_resources({"gcompris": {"animals": {"fox.webp": red, "owl.webp": (green, True)},
                                            "readme.txt": b"not a photo"}}, version)
    files = script.qt_resources(blob, "erase.rcc")
    assert files == {"/gcompris/animals/fox.webp": red, "/gcompris/animals/owl.webp": green,
                     "/gcompris/readme.txt": b"not a photo"}
    assert Image.open(io.BytesIO(files["/gcompris/animals/owl.webp"])).getpixel((5, 5)) == (20, 180, 40)


def test_a_missing_resource_or_a_file_that_is_not_one_is_named_in_the_error(tmp_path):
    script = load_script()
    rcc = tmp_path / "usr/share/gcompris-qt/rcc/erase.rcc"
    rcc.parent.mkdir(parents=True)
    rcc.write_bytes(compiled_resources({"gcompris": {"fox.webp": webp_photo((1, 2, 3))}}))
    data, source = script.read_source(tmp_path, "usr/share/gcompris-qt/rcc/erase.rcc!/gcompris/fox.webp")
    assert source == "usr/share/gcompris-qt/rcc/erase.rcc!/gcompris/fox.webp"
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    with pytest.raises(SystemExit, match=r"/gcompris/owl\.webp: not in usr/share/gcompris-qt/rcc/erase\.rcc"):
        script.read_source(tmp_path, "usr/share/gcompris-qt/rcc/erase.rcc!/gcompris/owl.webp")
    (tmp_path / "notes.rcc").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(SystemExit, match=r"notes\.rcc: not a compiled Qt resource file"):
        script.read_source(tmp_path, "notes.rcc!/x.webp")


def test_the_gcompris_set_names_each_photo_once_under_a_name_that_says_what_it_shows():
    script = load_script()
    names = [name for name, _, _ in script.SETS["gcompris"]]
    assert len(names) == len(set(names)) == 115
    assert "gcompris_france_eiffeltower" in names and "gcompris_erase_red_panda" in names
    assert all(inner.count("!") == 1 and inner.endswith(".webp") for _, _, inner in script.SETS["gcompris"])


def test_the_split_of_the_gcompris_photos_is_the_one_the_model_card_reports_on():
    script = load_script()
    names = [f"{name}.png" for name, _, _ in script.SETS["gcompris"]]
    splits = [script.split_of(name) for name in names]
    assert (splits.count("val"), splits.count("test")) == (57, 58)


def test_the_scratch_set_takes_only_the_photographic_backdrops():
    script = load_script()
    names = [name for name, _, _ in script.SETS["scratch"]]
    assert len(names) == len(set(names)) == 49
    assert not any(drawn in name for name in names for drawn in ("party_room", "room1", "school1", "school2",
                                                                  "chalkboard", "spotlight", "brick_wall1"))
