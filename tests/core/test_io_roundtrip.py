"""Real photos round-trip read -> write with every metadata tag carried (exiftool is the judge).

Files: camera/, makernotes/, orientation/, heic/ (valid ones) and edge/ of the shared test data. For each,
exiftool's tags (all groups, -a -G1, binary tags by sha256) of the output equal the source's except the
documented must-change list (tests/core/exiftool_support.py MUST_CHANGE, docs/photo-io.md); ICC and XMP
bytes are identical (read back with Pillow, not with our code); the pixels read back match what we wrote.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dpe_core.io import (
    CorruptPhotoError,
    DecompressionBombError,
    PhotoError,
    TruncatedPhotoError,
    UnsupportedPhotoError,
    decode_photo,
    encode_photo,
    read_photo,
    write_photo,
)
from tests.conftest import TESTDATA
from tests.core.exiftool_support import (  # noqa: F401  (fixtures: sources stay untouched)
    MUST_CHANGE,
    _testdata_hashes,
    assert_metadata_carried,
    exiftool_path,
    exiftool_tags,
    pristine_testdata,
)

pytestmark = pytest.mark.skipif(exiftool_path() is None, reason="exiftool not installed (libimage-exiftool-perl)")


def _files(folder: str, exclude: tuple[str, ...] = ()) -> list[str]:
    root = TESTDATA / folder
    if not root.is_dir():
        return [f"{folder}/<missing>"]
    return sorted(f"{folder}/{p.name}" for p in root.iterdir() if p.is_file() and p.name not in exclude)


HEIC_INVALID = ("corrupted.heic", "empty.heic", "truncated.heic")
CAMERA = _files("camera") + _files("makernotes") + _files("orientation")
HEIC = _files("heic", exclude=HEIC_INVALID)


def _src(testdata: Path, rel: str) -> Path:
    path = testdata / rel
    if not path.is_file():
        pytest.skip(f"{rel} not in the test data")
    return path


def _allowed_for(photo) -> tuple[list[str], list[str]]:
    """(allowed tag patterns, allowed new warnings) for this photo's situation."""
    allowed = list(MUST_CHANGE["encoding"])
    warnings: list[str] = []
    if photo.orientation_applied not in (1, None) or photo.source_format == "HEIF":
        allowed += MUST_CHANGE["rotated"]
    if photo.source_format == "MPO":
        allowed += MUST_CHANGE["mpf"]
    if photo.source_mode == "CMYK":
        allowed += MUST_CHANGE["cmyk"]
    if photo.source_format == "PNG":
        allowed += MUST_CHANGE["png-colour-type"]
    if photo.source_format == "TIFF":
        allowed += MUST_CHANGE["tiff-structure"]
    if photo.source_format == "HEIF":
        allowed += MUST_CHANGE["heif-container"] + MUST_CHANGE["heif-aux"]
    return allowed, warnings


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    top = 65535.0 if a.dtype == np.uint16 else 255.0
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(top * top / mse)


def _pil_info(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as im:
        return dict(im.info)


def _check_roundtrip(src: Path, tmp_path: Path, photo=None) -> tuple:
    photo = photo or read_photo(str(src))
    out = tmp_path / f"out{src.suffix if src.suffix.lower() != '.mpo' else '.jpg'}"
    write_photo(photo, str(out))
    data = out.read_bytes()
    allowed, _ = _allowed_for(photo)
    if photo.source_format == "MPO" or "sony_ilce6000" in src.name:
        allowed += MUST_CHANGE["mpf"]
    src_tags, dst_tags = exiftool_tags(src), exiftool_tags(data)
    assert_metadata_carried(
        src_tags, dst_tags, allowed, allowed_warnings=("*Error reading PreviewImage*",) if "sony" in src.name else ()
    )
    back = decode_photo(data, str(out))
    # pixels read back match what we wrote
    assert back.pixels.shape == photo.pixels.shape
    lossless = photo.source_format in ("PNG", "TIFF") or (photo.carry and photo.carry.info.get("lossless"))
    gray = photo.source_mode.split(";")[0] in ("L", "LA", "I", "1")
    if lossless and not gray:
        assert np.array_equal(back.pixels, photo.pixels)
    else:
        floor = 30.0 if photo.source_format == "HEIF" else 35.0
        assert _psnr(back.pixels, photo.pixels) > floor
    if photo.alpha is not None and photo.source_format != "JPEG":
        assert back.alpha is not None
        if lossless:
            assert np.array_equal(back.alpha, photo.alpha)
    return photo, data, src_tags, dst_tags


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rel", CAMERA)
def test_camera_photo_roundtrip_keeps_metadata(testdata, tmp_path, rel):
    src = _src(testdata, rel)
    photo, data, src_tags, dst_tags = _check_roundtrip(src, tmp_path)
    # ICC and XMP identical, as Pillow (not our code) reads them
    src_info, dst_info = _pil_info(src.read_bytes()), _pil_info(data)
    assert dst_info.get("icc_profile") == src_info.get("icc_profile")
    if photo.orientation_applied in (1, None):
        assert dst_info.get("xmp") == src_info.get("xmp")
    # orientation: the output has no tag that disagrees with its (upright) pixels
    assert dst_tags.get("IFD0:Orientation", 1) == 1 or photo.orientation_applied == 1
    assert (
        photo.exif is None
        or src_tags.get("IFD0:Orientation", 1) == photo.orientation_applied
        or (photo.orientation_applied == 1)
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("rel", HEIC)
def test_heic_roundtrip_keeps_metadata(testdata, tmp_path, rel):
    src = _src(testdata, rel)
    photo, data, src_tags, dst_tags = _check_roundtrip(src, tmp_path)
    # everything that describes the photo (EXIF, GPS, XMP, IPTC, ICC) is carried: only container groups may differ
    for key, value in src_tags.items():
        group = key.split(":")[0]
        if group in ("IFD0", "ExifIFD", "GPS", "XMP-x", "XMP-exif", "XMP-tiff", "XMP-dc", "IPTC", "ICC_Profile"):
            if key == "IFD0:Orientation":
                assert dst_tags[key] == 1
            elif key in ("ExifIFD:ExifImageWidth", "ExifIFD:ExifImageHeight") and src_tags.get("QuickTime:Rotation"):
                continue  # follow the upright stored image, checked below
            else:
                assert dst_tags.get(key) == value, key
    # the HEIF decoder already applied irot: upright pixels, no rotation left in the output
    assert "QuickTime:Rotation" not in dst_tags
    if src_tags.get("QuickTime:Rotation"):
        w, h = src_tags["QuickTime:ImageSpatialExtent"].split()
        if src_tags["QuickTime:Rotation"] in (90, 270):
            assert (photo.width, photo.height) == (int(h), int(w))
        # the output's stored image is the upright one: its EXIF dimensions follow it
        if "ExifIFD:ExifImageWidth" in src_tags:
            assert (dst_tags["ExifIFD:ExifImageWidth"], dst_tags["ExifIFD:ExifImageHeight"]) == (
                photo.width,
                photo.height,
            )


ORIENTATION = [f for f in _files("orientation")]


@pytest.mark.parametrize("rel", ORIENTATION)
def test_orientation_displays_upright_once(testdata, tmp_path, rel):
    src = _src(testdata, rel)
    with Image.open(src) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    photo = read_photo(str(src))
    assert np.array_equal(photo.pixels, reference)  # turned exactly once, same decoder
    out = tmp_path / ("out" + src.suffix)
    write_photo(photo, str(out))
    with Image.open(out) as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # what a viewer displays
    assert shown.shape == reference.shape
    assert _psnr(shown, reference) > 30
    tags = exiftool_tags(out)
    assert tags.get("IFD0:Orientation", 1) == 1


@pytest.mark.parametrize(
    "name, error",
    [
        ("corrupted.heic", CorruptPhotoError),
        ("empty.heic", TruncatedPhotoError),
        ("truncated.heic", TruncatedPhotoError),
    ],
)
def test_damaged_heic_raises_documented_error(testdata, tmp_path, name, error):
    src = _src(testdata, f"heic/{name}")
    with pytest.raises(error, match=name):
        write_photo(read_photo(str(src)), str(tmp_path / "out.heic"))
    assert list(tmp_path.iterdir()) == []


def test_iphone_heic_is_not_rotated_twice(testdata):
    src = _src(testdata, "heic/iphone8plus_irot.heic")
    tags = exiftool_tags(src)
    assert tags["IFD0:Orientation"] == 6 and tags["QuickTime:Rotation"] in (90, 270)
    photo = read_photo(str(src))
    # irot is applied by the decoder; EXIF 6 agrees with it and must not be applied again
    assert (photo.width, photo.height) == (3024, 4032)
    assert photo.orientation_applied == 6
    from dpe_core.io.exif import read_orientation

    assert read_orientation(photo.exif) == 1


# ------------------------------------------------------------------------------------------------ edge files

EDGE_ERRORS: dict[str, type[PhotoError]] = {
    "bomb.gif": DecompressionBombError,
    "bomb.ico": UnsupportedPhotoError,
    "bomb_800gpx.png": DecompressionBombError,
    "bomb_200mp_samsung.heic": DecompressionBombError,
    "broken.png": CorruptPhotoError,
    "corrupt_cve_2017_2862.jpg": CorruptPhotoError,
    "corrupt_png_crc.png": CorruptPhotoError,
    "corrupt_png_nodata.png": CorruptPhotoError,
    "corrupt_png_sig.png": UnsupportedPhotoError,
    "corrupt_random.jpg": CorruptPhotoError,
    "exif_corrupt_huge_tag.jpg": TruncatedPhotoError,
    "exif_corrupt_max_uint32.jpg": TruncatedPhotoError,
    "truncated.png": TruncatedPhotoError,
    "truncated_premature_end.jpg": TruncatedPhotoError,
    "truncated_progressive.jpg": TruncatedPhotoError,
}
EDGE = _files("edge")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rel", EDGE)
def test_edge_file_roundtrips_or_raises_documented_error(testdata, tmp_path, rel):
    src = _src(testdata, rel)
    expected = EDGE_ERRORS.get(src.name)
    if expected is not None:
        with pytest.raises(expected) as info:
            photo = read_photo(str(src))
            write_photo(photo, str(tmp_path / ("out" + src.suffix)))
        assert str(src) in str(info.value)  # the message names the file
        assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file
        return
    photo, data, src_tags, dst_tags = _check_roundtrip(src, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{src.suffix if src.suffix != '.mpo' else '.jpg'}"]
    if photo.source_format != "MPO" and photo.source_mode != "CMYK":
        assert _pil_info(data).get("icc_profile") == _pil_info(src.read_bytes()).get("icc_profile")


def test_sixteen_bit_sources_stay_sixteen_bit(testdata, tmp_path):
    import tifffile

    for rel in ("edge/rgb16.png", "edge/rgba16.png", "edge/gray16.png", "edge/rgb16.tiff", "edge/gray16.tif"):
        src = _src(testdata, rel)
        photo = read_photo(str(src))
        assert photo.pixels.dtype == np.uint16 and photo.bit_depth == 16, rel
        out = tmp_path / ("o" + src.suffix)
        write_photo(photo, str(out))
        assert read_photo(str(out)).pixels.dtype == np.uint16
        tags = exiftool_tags(out)
        depth = tags.get("PNG:BitDepth") or tags.get("IFD0:BitsPerSample")
        assert str(depth).split()[0] == "16", rel
    # exact values: compare with an independent decoder
    ours = read_photo(str(_src(testdata, "edge/rgb16.tiff"))).pixels
    assert np.array_equal(ours, tifffile.imread(TESTDATA / "edge/rgb16.tiff"))


@pytest.mark.timeout(120)
def test_200mp_heic_only_with_an_explicit_limit(testdata):
    src = _src(testdata, "edge/bomb_200mp_samsung.heic")
    with pytest.raises(DecompressionBombError, match="200|199"):
        read_photo(str(src))
    photo = read_photo(str(src), max_pixels=250_000_000)
    assert photo.width * photo.height > 199_000_000


def test_with_pixels_regenerates_thumbnail_and_keeps_the_rest(testdata, tmp_path):
    src = _src(testdata, "camera/nikon_d2h_gps_xmp.jpg")
    photo = read_photo(str(src))
    enhanced = photo.with_pixels(255 - photo.pixels)  # a visible "enhancement"
    out = tmp_path / "enhanced.jpg"
    write_photo(enhanced, str(out))
    allowed = MUST_CHANGE["encoding"] + MUST_CHANGE["thumbnail"]
    diff = assert_metadata_carried(src, out, allowed)
    assert "IFD1:ThumbnailImage" in diff  # the stale thumbnail was replaced
    from dpe_core.io.exif import strip_prefix, thumbnail_span

    back = read_photo(str(out))
    start, length = thumbnail_span(back.exif)
    with Image.open(io.BytesIO(strip_prefix(back.exif)[1][start : start + length])) as thumb:
        small = np.asarray(thumb.convert("RGB").resize((8, 8)), dtype=np.float64)
    expected = np.asarray(Image.fromarray(255 - photo.pixels).resize((8, 8)), dtype=np.float64)
    assert np.abs(small - expected).mean() < 25


def test_resize_updates_dimension_tags_only(testdata, tmp_path):
    src = _src(testdata, "camera/canon_s40.jpg")
    photo = read_photo(str(src))
    half = np.ascontiguousarray(photo.pixels[::2, ::2])
    out = tmp_path / "half.jpg"
    write_photo(photo.with_pixels(half), str(out))
    tags = exiftool_tags(out)
    assert (tags["ExifIFD:ExifImageWidth"], tags["ExifIFD:ExifImageHeight"]) == (half.shape[1], half.shape[0])
    allowed = MUST_CHANGE["encoding"] + MUST_CHANGE["thumbnail"] + MUST_CHANGE["rotated"]
    assert_metadata_carried(src, out, allowed)


def test_convert_to_another_format_keeps_exif_icc_xmp(testdata, tmp_path):
    src = _src(testdata, "camera/pentax_k3ii_gps_icc_xmp.jpg")
    photo = read_photo(str(src))
    for ext in (".png", ".webp", ".tif"):
        out = tmp_path / f"x{ext}"
        write_photo(photo, str(out))
        tags = exiftool_tags(out)
        src_tags = exiftool_tags(src)
        for key in ("IFD0:Make", "IFD0:Model", "GPS:GPSLatitude", "GPS:GPSLongitude", "ExifIFD:DateTimeOriginal"):
            if key in src_tags:
                assert tags.get(key) == src_tags[key], (ext, key)
        assert _pil_info(out.read_bytes()).get("icc_profile") == _pil_info(src.read_bytes()).get("icc_profile")
        back = read_photo(str(out))
        assert back.xmp == photo.xmp
    encoded = encode_photo(photo, format="PNG")
    assert encoded.startswith(b"\x89PNG")
