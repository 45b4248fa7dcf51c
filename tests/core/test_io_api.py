"""Photo IO API contract: errors, atomic local writes, originals never written, EXIF summary, listing.

Most tests build their photos in memory (no test data needed); the summary tests use the real files.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dpe_core.io.storage as storage
from dpe_core.io import (
    CorruptPhotoError,
    DecompressionBombError,
    ExifSummary,
    MetadataError,
    Photo,
    PhotoError,
    StorageError,
    TruncatedPhotoError,
    UnsupportedPhotoError,
    decode_photo,
    encode_photo,
    read_exif_summary,
    read_photo,
    write_photo,
)
from dpe_core.io.exif import apply_orientation, patch_exif, read_orientation
from tests.core.exiftool_support import (  # noqa: F401  (fixtures: sources stay untouched)
    _testdata_hashes,
    exiftool_path,
    exiftool_tags,
    pristine_testdata,
)


def _jpeg(width=64, height=48, exif: bytes | None = None, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        e = Image.Exif()
        e[0x0112] = orientation
        e[0x010F] = "TestMake"
        kw["exif"] = e.tobytes()
    elif exif is not None:
        kw["exif"] = exif
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_error_family_is_valueerror_and_names_the_file():
    for cls in (TruncatedPhotoError, CorruptPhotoError, UnsupportedPhotoError, DecompressionBombError, MetadataError):
        assert issubclass(cls, PhotoError) and issubclass(cls, ValueError)
    with pytest.raises(TruncatedPhotoError, match="empty.jpg"):
        decode_photo(b"", "empty.jpg")
    with pytest.raises(UnsupportedPhotoError, match="notes.txt"):
        decode_photo(b"hello, not a photo at all", "notes.txt")
    data = _jpeg()
    with pytest.raises(TruncatedPhotoError, match="cut.jpg"):
        decode_photo(data[: len(data) // 2], "cut.jpg")


def test_max_pixels_checked_from_the_header():
    data = _jpeg(200, 100)
    with pytest.raises(DecompressionBombError, match="small-limit.jpg"):
        decode_photo(data, "small-limit.jpg", max_pixels=10_000)
    assert decode_photo(data, "ok.jpg", max_pixels=20_000).pixels.shape == (100, 200, 3)


def test_orientation_applied_once_and_tag_reset():
    data = _jpeg(64, 48, orientation=6)
    photo = decode_photo(data, "o6.jpg")
    assert photo.pixels.shape == (64, 48, 3) and photo.orientation_applied == 6
    assert read_orientation(photo.exif) == 1
    again = decode_photo(encode_photo(photo), "again.jpg")  # written upright with tag 1: not turned again
    assert again.pixels.shape == (64, 48, 3) and again.orientation_applied == 1


def test_apply_orientation_matches_pillow():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for value in range(1, 9):
        img = Image.fromarray(a)
        exif = img.getexif()
        exif[0x0112] = value
        buf = io.BytesIO()
        img.save(buf, "PNG", exif=exif.tobytes())
        from PIL import ImageOps

        with Image.open(io.BytesIO(buf.getvalue())) as im:
            expected = np.asarray(ImageOps.exif_transpose(im))
        assert np.array_equal(apply_orientation(a, value), expected), value


def test_patch_exif_keeps_length_and_other_bytes():
    e = Image.Exif()
    e[0x0112] = 8
    e[0x010F] = "Maker"
    raw = e.tobytes()
    patched = patch_exif(raw, orientation=1)
    assert len(patched) == len(raw)
    assert sum(a != b for a, b in zip(raw, patched, strict=True)) == 1
    assert read_orientation(patched) == 1


def test_local_write_is_atomic(tmp_path, monkeypatch):
    photo = decode_photo(_jpeg(), "in.jpg")
    target = tmp_path / "out.jpg"
    target.write_bytes(b"previous complete version")

    def broken_replace(src, dst):
        raise OSError("disk full at rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="out.jpg"):
        write_photo(photo, str(target))
    assert target.read_bytes() == b"previous complete version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]  # no temp file left


def test_encoder_failure_writes_nothing(tmp_path, monkeypatch):
    import dpe_core.io.readwrite as readwrite_module

    photo = decode_photo(_jpeg(), "in.jpg")

    def boom(*a, **k):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(readwrite_module, "encode_photo", boom)
    with pytest.raises(RuntimeError):
        write_photo(photo, str(tmp_path / "x.jpg"))
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_the_source(tmp_path):
    src = tmp_path / "original.jpg"
    src.write_bytes(_jpeg())
    before = src.read_bytes()
    photo = read_photo(str(src))
    with pytest.raises(StorageError, match="overwrite the source"):
        write_photo(photo, str(src))
    with pytest.raises(StorageError):
        write_photo(photo, f"file://{src}")
    assert src.read_bytes() == before


def test_memory_url_roundtrip_and_format_from_extension():
    storage.write_bytes_atomic("memory://dpe-io-test/in.jpg", _jpeg())
    photo = read_photo("memory://dpe-io-test/in.jpg")
    write_photo(photo, "memory://dpe-io-test/out.png")
    assert storage.read_bytes("memory://dpe-io-test/out.png").startswith(b"\x89PNG")
    write_photo(photo, "memory://dpe-io-test/out.bin", format="webp")
    assert storage.read_bytes("memory://dpe-io-test/out.bin")[8:12] == b"WEBP"
    assert storage.list_files("memory://dpe-io-test", extensions=[".jpg", "png"]) == ["in.jpg", "out.png"]
    with pytest.raises(StorageError, match="missing.jpg"):
        read_photo("memory://dpe-io-test/missing.jpg")


def test_encode_options():
    photo = decode_photo(_jpeg(), "in.jpg")
    small = encode_photo(photo, quality=50, subsampling="4:2:0")
    big = encode_photo(photo, quality=95)
    assert len(small) < len(big)
    with pytest.raises(ValueError):
        encode_photo(photo, subsampling="3:1:1")
    with pytest.raises(UnsupportedPhotoError):
        encode_photo(photo, format="GIF")


def test_with_pixels_validates_and_keeps_metadata():
    photo = decode_photo(_jpeg(orientation=1), "in.jpg")
    with pytest.raises(ValueError):
        photo.with_pixels(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        photo.with_pixels(np.zeros((4, 4, 3), dtype=np.float32))
    new = photo.with_pixels(np.zeros((10, 20, 3), dtype=np.uint16))
    assert new.exif == photo.exif and new.bit_depth == 16 and new.pixels_changed


def test_alpha_is_reattached_and_flattened_for_jpeg():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(8, dtype=np.uint8)[None, :] * 36
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    photo = decode_photo(buf.getvalue(), "a.png")
    assert photo.alpha is not None and np.array_equal(photo.alpha, rgba[..., 3])
    back = decode_photo(encode_photo(photo), "b.png")
    assert np.array_equal(back.alpha, rgba[..., 3]) and np.array_equal(back.pixels, photo.pixels)
    as_jpeg = decode_photo(encode_photo(photo, format="JPEG"), "c.jpg")
    assert as_jpeg.alpha is None
    assert as_jpeg.pixels[0, 0].min() > 240  # transparent pixel flattened on white


def test_exif_too_large_for_jpeg_is_a_metadata_error():
    photo = decode_photo(_jpeg(), "in.jpg")
    e = Image.Exif()
    e[0x010E] = "x" * 70000
    big = photo.__class__(**{**photo.__dict__, "exif": e.tobytes()})
    with pytest.raises(MetadataError, match="in.jpg"):
        encode_photo(big)


def test_summary_never_crashes_on_garbage():
    for junk in (b"", b"II*\x00\xff\xff\xff\xff", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", os.urandom(200)):
        summary = read_exif_summary(junk)
        assert isinstance(summary, ExifSummary) and summary.warning


@pytest.mark.skipif(exiftool_path() is None, reason="exiftool not installed")
@pytest.mark.parametrize(
    "rel",
    ["camera/iphone4s_gps.jpg", "camera/lumia820_gps.jpg", "camera/nikon_d2h_gps_xmp.jpg", "heic/xiaomi_gps.heic"],
)
def test_summary_matches_exiftool(testdata, rel):
    src = testdata / rel
    if not src.is_file():
        pytest.skip(f"{rel} missing")
    tags = exiftool_tags(src)
    summary = read_exif_summary(src.read_bytes()) if rel.endswith(".jpg") else read_photo(str(src)).metadata
    assert summary.warning is None
    assert summary.make == str(tags["IFD0:Make"]).strip()
    assert summary.model == str(tags["IFD0:Model"]).strip()
    lat = tags.get("Composite:GPSLatitude")
    lon = tags.get("Composite:GPSLongitude")
    assert summary.gps_latitude == pytest.approx(lat, abs=1e-5)
    assert summary.gps_longitude == pytest.approx(lon, abs=1e-5)
    if "ExifIFD:FNumber" in tags:
        assert summary.f_number == pytest.approx(tags["ExifIFD:FNumber"], rel=1e-3)
    if "ExifIFD:ISO" in tags:
        assert summary.iso == tags["ExifIFD:ISO"]
    if "ExifIFD:ExposureTime" in tags:
        assert summary.exposure_time == pytest.approx(tags["ExifIFD:ExposureTime"], rel=1e-3)


def test_summary_of_every_real_file_never_raises(testdata):
    for path in sorted(testdata.glob("*/*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".heic", ".heif", ".png", ".webp", ".tif", ".tiff", ".mpo"):
            if path.stat().st_size > 3_000_000:
                continue
            assert isinstance(read_exif_summary(path.read_bytes()), ExifSummary)


def test_photo_dataclass_fields():
    photo = decode_photo(_jpeg(), "in.jpg")
    assert isinstance(photo, Photo)
    for name in ("pixels", "alpha", "source_format", "source_mode", "bit_depth", "exif", "icc_profile", "xmp",
                 "iptc", "orientation_applied", "name"):  # fmt: skip
        assert hasattr(photo, name)
    assert photo.source_format == "JPEG" and photo.bit_depth == 8 and photo.pixels.dtype == np.uint8


def test_dpe_core_io_imports_no_orchestration():
    code = (
        "import sys, dpe_core.io, dpe_core.io.photo, dpe_core.io.decode, dpe_core.io.encode, dpe_core.io.summary; "
        "bad = [m for m in ('prefect', 'dask', 'distributed') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_local_write_gets_ordinary_file_permissions(tmp_path):
    # Outputs must be readable like any file the user writes (mkstemp alone would leave them 0600).
    import stat

    from dpe_core.io import storage

    mask = os.umask(0o022)
    os.umask(mask)
    target = tmp_path / "shared.jpg"
    storage.write_bytes_atomic(str(target), b"data")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
