"""Hostile inputs refused before they cost memory: metadata bombs, huge files, and error texts that stay useful.

The bomb files are built in memory with zlib (tests/core/bombs.py): a real PNG whose iTXt/zTXt/iCCP chunk
inflates to 200 MB, an oversized EXIF, an ICC profile spread over many JPEG segments; memory is measured in a
fresh subprocess (ru_maxrss).
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from dpe_core.io import (
    DEFAULT_LIMITS,
    CorruptPhotoError,
    DecompressionBombError,
    InputTooLargeError,
    IoLimits,
    MetadataBombError,
    PhotoError,
    StorageError,
    TruncatedPhotoError,
    decode_photo,
    encode_photo,
    read_photo,
    storage,
)
from dpe_core.io.limits import inflate, inflated_size
from dpe_core.io.redact import redact
from tests.core.bombs import (
    MB,
    XMP_KEY,
    chunk,
    deflate_repeated,
    iccp_chunk,
    itxt_chunk,
    png_with,
    sparse_file,
    ztxt_chunk,
)

# ------------------------------------------------------------------------------------------------ limits config


def test_limits_defaults_env_and_validation():
    assert IoLimits() == IoLimits(max_input_bytes=1 << 30, max_pixels=100_000_000, max_metadata_bytes=16 * MB,
                                  max_metadata_total_bytes=64 * MB)
    env = {"DPE_MAX_INPUT_BYTES": "1_000", "DPE_MAX_METADATA_BYTES": "2048", "DPE_MAX_PIXELS": " 77 "}
    assert IoLimits.from_env(env) == IoLimits(max_input_bytes=1000, max_pixels=77, max_metadata_bytes=2048)
    with pytest.raises(ValueError, match="DPE_MAX_METADATA_TOTAL_BYTES"):
        IoLimits.from_env({"DPE_MAX_METADATA_TOTAL_BYTES": "lots"})
    with pytest.raises(ValueError, match="max_pixels"):
        IoLimits(max_pixels=0)
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_pixels = 1  # frozen


def test_limits_from_environment_of_a_new_process():
    code = "from dpe_core.io import DEFAULT_LIMITS as L; print(L.max_input_bytes, L.max_metadata_bytes)"
    env = dict(os.environ, DPE_MAX_INPUT_BYTES="12345", DPE_MAX_METADATA_BYTES="678")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["12345", "678"]


def test_bounded_inflate_never_produces_more_than_the_limit():
    stream = deflate_repeated(50 * MB)
    assert inflated_size(stream, 1 << 62) == 50 * MB
    assert 10 * MB <= inflated_size(stream, 10 * MB) < 12 * MB  # stopped early
    with pytest.raises(MetadataBombError, match="x.png: metadata too large: the block inflates to more than the limit "
                                                "of 1.0 MiB"):
        inflate(stream, MB, "x.png", "the block")
    assert inflate(zlib.compress(b"abc" * 1000), 3000, "x", "y") == b"abc" * 1000
    with pytest.raises(zlib.error):
        inflate(b"not zlib", 100, "x", "y")


# ------------------------------------------------------------------------------------------------ metadata bombs

BOMBS = {
    # name: (chunks before IDAT, chunks after IDAT, words the error must contain)
    "itxt_xmp": (lambda: [itxt_chunk(XMP_KEY, deflate_repeated(200 * MB, b"<x:xmpmeta>"), True)], lambda: [],
                 ["iTXt", "XML:com.adobe.xmp", "(XMP)", "inflates to more than the limit of 16.0 MiB",
                  "max_metadata_bytes", "DPE_MAX_METADATA_BYTES", "before inflating"]),
    "ztxt_exif_after_idat": (lambda: [],
                             lambda: [ztxt_chunk(b"Raw profile type exif", deflate_repeated(200 * MB, b"exif"))],
                             ["zTXt", "Raw profile type exif", "inflates to more than the limit of 16.0 MiB"]),
    "iccp": (lambda: [iccp_chunk(deflate_repeated(200 * MB, b"\x00\x00\x02\x00"))], lambda: [],
             ["iCCP", "ICC Profile", "(ICC profile)", "inflates to more than the limit of 16.0 MiB"]),
    "many_small_chunks": (lambda: [ztxt_chunk(b"Comment%d" % i, deflate_repeated(15 * MB)) for i in range(6)],
                          lambda: [], ["zTXt", "blocks together", "64.0 MiB", "max_metadata_total_bytes"]),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_png_metadata_bomb_is_refused_before_inflating(case, tmp_path):
    before, after, words = BOMBS[case]
    data = png_with(before(), after())
    assert len(data) < 2 * MB
    with pytest.raises(MetadataBombError) as info:
        decode_photo(data, f"{case}.png")
    text = str(info.value)
    assert text.startswith(f"{case}.png: metadata too large: PNG ")
    for word in words:
        assert word in text, (word, text)
    assert isinstance(info.value, DecompressionBombError) and isinstance(info.value, PhotoError)


_MEMORY_PROBE = """
import resource, sys
from dpe_core.io import decode_photo, encode_photo, MetadataBombError
data = open(sys.argv[1], "rb").read()
warm = open(sys.argv[2], "rb").read()
encode_photo(decode_photo(warm, "warm.png"))  # imports and first allocations before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_photo(data, "bomb.png")
    print("DECODED")
except MetadataBombError as exc:
    print("REFUSED", exc)
print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_bomb_memory_stays_bounded(tmp_path):
    """1 GB of XMP in a 1 MB PNG: before, 4.2 GB peak and a 1 GB output; now refused within a few MB."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with([itxt_chunk(XMP_KEY, deflate_repeated(1024 * MB, b"<x:xmpmeta>"), True, method=0)]))
    warm = tmp_path / "warm.png"
    warm.write_bytes(png_with([]))
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(bomb), str(warm)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "REFUSED bomb.png: metadata too large" in out, out
    growth_kb = int(out.split("GROWTH_KB")[1])
    assert growth_kb < 100 * 1024, out  # the bomb's file is ~1 MB; 1 GB if it were inflated


def test_itxt_with_unknown_compression_method_is_carried_not_inflated():
    data = png_with([itxt_chunk(XMP_KEY, deflate_repeated(64 * MB), True, method=7)])
    photo = decode_photo(data, "odd.png")
    assert photo.xmp is None  # not an XMP packet we can read: carried verbatim, never inflated
    out = encode_photo(photo)
    assert len(out) < len(data) + 4096


def test_oversized_stored_exif_is_refused():
    exif = b"MM\x00*\x00\x00\x00\x08\x00\x00" + bytes(20 * MB)
    with pytest.raises(MetadataBombError, match=r"big.png: metadata too large: PNG eXIf chunk \(EXIF\) is 20.0 MiB"):
        decode_photo(png_with([chunk(b"eXIf", exif)]), "big.png")
    small = IoLimits(max_metadata_bytes=64 * 1024)
    with pytest.raises(MetadataBombError, match="65536 bytes; max_metadata_bytes"):
        decode_photo(png_with([chunk(b"eXIf", exif[: 100 * 1024])]), "b.png", limits=small)


def test_large_but_legal_compressed_xmp_roundtrips():
    """3 MB of XMP (above Pillow's own 1 MB text default, below our 16 MiB limit) is carried byte for byte."""
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"<!-- history -->" * (3 * MB // 16) + b"</x:xmpmeta>"
    data = png_with([itxt_chunk(XMP_KEY, zlib.compress(xmp, 9), True)])
    photo = decode_photo(data, "history.png")
    assert photo.xmp == xmp
    assert decode_photo(encode_photo(photo), "out.png").xmp == xmp


def test_damaged_compressed_text_is_corrupt_not_a_crash():
    with pytest.raises(CorruptPhotoError, match="zTXt chunk 'Comment': compressed data is damaged"):
        decode_photo(png_with([ztxt_chunk(b"Comment", b"\x78\x9c garbage")]), "z.png")


def test_jpeg_icc_spread_over_segments_counts_as_one_block():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG", icc_profile=bytes(200_000))  # 4 APP2 segments
    data = buf.getvalue()
    assert decode_photo(data, "ok.jpg").icc_profile == bytes(200_000)
    with pytest.raises(MetadataBombError, match=r"icc.jpg: metadata too large: JPEG ICC profile segments is 195"):
        decode_photo(data, "icc.jpg", limits=IoLimits(max_metadata_bytes=100_000))


def test_webp_and_tiff_metadata_limits():
    img = Image.new("RGB", (16, 16), "blue")
    buf = io.BytesIO()
    img.save(buf, "WEBP", xmp=b"<x:xmpmeta>" + b" " * 50_000 + b"</x:xmpmeta>")
    with pytest.raises(MetadataBombError, match="WebP XMP chunk"):
        decode_photo(buf.getvalue(), "x.webp", limits=IoLimits(max_metadata_bytes=10_000))
    buf = io.BytesIO()
    img.save(buf, "TIFF", icc_profile=bytes(50_000))
    with pytest.raises(MetadataBombError, match=r"TIFF ICC profile \(tag 34675\)"):
        decode_photo(buf.getvalue(), "x.tif", limits=IoLimits(max_metadata_bytes=10_000))


# ------------------------------------------------------------------------------------------------ input size


def test_64gb_sparse_file_is_refused_unread(tmp_path):
    huge = sparse_file(tmp_path / "huge.jpg", 64 << 30)  # sparse: no disk used
    with pytest.raises(InputTooLargeError) as info:
        read_photo(str(huge))
    text = str(info.value)
    assert text.startswith(f"{huge}: file too large: 64.0 GiB (68719476736 bytes) exceeds the input limit of 1.0 GiB")
    assert "DPE_MAX_INPUT_BYTES" in text
    with pytest.raises(InputTooLargeError, match="68719476736 bytes"):
        storage.read_bytes(str(huge), max_bytes=1 << 30)
    with pytest.raises(InputTooLargeError, match="100 bytes"):
        read_photo(str(huge), max_bytes=100)


def test_size_limits_on_bytes_memory_and_devices(tmp_path):
    data = png_with([])
    with pytest.raises(InputTooLargeError, match="a.png: file too large"):
        decode_photo(data, "a.png", limits=IoLimits(max_input_bytes=len(data) - 1))
    storage.write_bytes_atomic("memory://limits-test/p.png", data)
    assert storage.read_bytes("memory://limits-test/p.png", max_bytes=len(data)) == data
    with pytest.raises(InputTooLargeError, match="memory://limits-test/p.png"):
        storage.read_bytes("memory://limits-test/p.png", max_bytes=len(data) - 1)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # would block (or, as a device, never end) if it were opened and read
    fs, path = storage.filesystem(str(fifo))
    with pytest.raises(StorageError, match="pipe.jpg: storage error: not a regular file"):
        storage.check_path_size(fs, path, max_bytes=1 << 30, name="pipe.jpg")
    with pytest.raises(StorageError, match="pipe.jpg: storage error: not a regular file"):  # refused, not blocked
        storage.read_path_bytes(fs, path, max_bytes=1 << 30, name="pipe.jpg")


# ------------------------------------------------------------------------------------------------ error texts


def test_errors_are_picklable_never_empty_and_hold_no_credentials(monkeypatch):
    for cls in (TruncatedPhotoError, MetadataBombError, InputTooLargeError, StorageError):
        err = cls("a.jpg", "detail")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err) == f"a.jpg: {cls.reason}: detail"
    assert str(CorruptPhotoError("a.jpg", "")) == "a.jpg: corrupt photo: no detail given"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "FAKE-SECRET-0123456789")
    err = StorageError("ftp://alice:hunter2-password@host/x.jpg", "denied (key FAKE-SECRET-0123456789)")
    assert "hunter2" not in str(err) and "FAKE-SECRET" not in str(err)
    assert str(err) == "ftp://***@host/x.jpg: storage error: denied (key ***)"
    assert redact("https://h/x.jpg?X-Amz-Signature=abcdef123456&ok=1") == "https://h/x.jpg?X-Amz-Signature=***&ok=1"
    assert redact("s3://bucket/photos@2x/a.jpg") == "s3://bucket/photos@2x/a.jpg"  # no userinfo: untouched


def test_storage_options_secrets_are_masked_in_errors(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(StorageError) as info:
        read_photo(str(missing), password="opt-secret-value-42")  # local fs accepts and ignores the option
    assert "no such file" in str(info.value)
    assert redact("leaked opt-secret-value-42 here") == "leaked *** here"


def test_read_photo_within_the_limits(tmp_path):
    path = Path(tmp_path / "p.png")
    path.write_bytes(png_with([]))
    assert read_photo(str(path)).pixels.shape == (6, 8, 3)
