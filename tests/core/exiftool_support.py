"""exiftool as the independent judge of metadata: tag dumps and "was everything carried?" assertions.

Reusable by any test that writes photos (``from tests.core.exiftool_support import ...``):

* ``exiftool_tags(path_or_bytes)`` -> {"Group:Tag": value}: every tag exiftool sees (``-a -G1 -n -b -u``), all
  groups, duplicates kept (a list when a Group:Tag occurs more than once), binary values replaced by
  ``"sha256:<hex>"`` so that thumbnails, maker-note blobs and ICC data compare by content.
* ``assert_metadata_carried(src, dst, allowed_changes=...)``: every tag of src has the same value in dst and dst
  has no new tag, except tags matching ``allowed_changes`` (fnmatch patterns such as ``"MPF0:*"``) and the
  file-system/encoding tags in ``ALWAYS_ALLOWED``. Returns the differences it allowed.
* ``MUST_CHANGE``: the documented must-change lists (docs/photo-io.md), by situation.

One exiftool process is kept running (``-stay_open``) for speed; it is closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import base64
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

# Tags that describe the file or the encoding, not the photo's metadata: never compared.
ALWAYS_ALLOWED = (
    "SourceFile",
    "System:*",
    "ExifTool:ExifToolVersion",
    "File:FileSize",
    "File:FileModifyDate",
    "File:FileAccessDate",
    "File:FileInodeChangeDate",
    "File:FilePermissions",
    "File:FileName",
    "File:Directory",
)

# The documented must-change lists (docs/photo-io.md "What must change"), by situation.
MUST_CHANGE: dict[str, tuple[str, ...]] = {
    # re-encoding the pixels (JPEG 4:4:4 by default; PNG/TIFF/HEIF encoder details)
    "encoding": (
        "File:YCbCrSubSampling",
        "File:EncodingProcess",
        "PNG:Filter",
        "PNG:Interlace",
        "File:BitsPerSample",
        "IFD1:ThumbnailOffset",  # exiftool reports it as a file position: moves when the EXIF block moves
        "Composite:ImageSize",
        "Composite:Megapixels",
    ),
    # pixels turned upright: orientation tags become 1, stored dimensions swap, thumbnail regenerated
    "rotated": (
        "IFD0:Orientation",
        "IFD1:Orientation",
        "XMP-tiff:Orientation",
        "ExifIFD:ExifImageWidth",
        "ExifIFD:ExifImageHeight",
        "IFD0:ImageWidth",
        "IFD0:ImageHeight",
        "File:ImageWidth",
        "File:ImageHeight",
        "RIFF:ImageWidth",
        "RIFF:ImageHeight",
        "PNG:ImageWidth",
        "PNG:ImageHeight",
        "IFD1:ThumbnailImage",
        "IFD1:ThumbnailLength",
        "IFD1:ImageWidth",
        "IFD1:ImageHeight",
        "Composite:ImageSize",
        "Composite:ThumbnailImage",
    ),
    # pixels replaced (enhanced): the EXIF thumbnail is regenerated in its old space
    "thumbnail": (
        "IFD1:ThumbnailImage",
        "IFD1:ThumbnailLength",
        "IFD1:ImageWidth",
        "IFD1:ImageHeight",
        "Composite:ThumbnailImage",
    ),
    # multi-picture JPEGs (MPO, camera previews): the MPF index and appended images are not carried
    # (a maker-note preview that lived in an appended MPF image, e.g. Sony:PreviewImage, goes with it)
    "mpf": (
        "MPF0:*",
        "MPImage*:*",
        "Composite:MPImage*",
        "Composite:PreviewImage",
        "File:FileType",
        "File:FileTypeExtension",
        "File:MIMEType",
        "Sony:PreviewImage",
    ),
    # CMYK sources are written as RGB with an sRGB profile
    "cmyk": (
        "ICC-header:*",
        "ICC_Profile:*",
        "ICC-*:*",
        "File:ColorComponents",
        "Adobe:ColorTransform",
        "File:BitsPerSample",
    ),
    # palette / colour-key / low-bit-depth PNGs are written as truecolour (+alpha)
    "png-colour-type": (
        "PNG:ColorType",
        "PNG:BitDepth",
        "PNG-PLTE:*",
        "PNG:Transparency",
        "PNG:BackgroundColor",
        "PNG:SignificantBits",
        "PNG:Palette*",
    ),
    # TIFF structure is written anew: one Deflate strip
    "tiff-structure": (
        "IFD0:Compression",
        "IFD0:StripOffsets",
        "IFD0:RowsPerStrip",
        "IFD0:StripByteCounts",
        "IFD0:PlanarConfiguration",
        "IFD0:Predictor",
        "IFD0:ExtraSamples",
        "IFD0:SubfileType",
        "IFD0:PhotometricInterpretation",
        "IFD0:SamplesPerPixel",
        "IFD0:BitsPerSample",
        "IFD0:ImageWidth",
        "IFD0:ImageHeight",
        "IFD0:TileWidth",
        "IFD0:TileLength",
        "IFD0:TileOffsets",
        "IFD0:TileByteCounts",
        "IFD0:JPEGTables",
        "IFD0:YCbCrSubSampling",
        "IFD0:SampleFormat",
        "IFD0:ReferenceBlackWhite",
        "IFD0:PreviewImage*",
    ),
    # HEIF container boxes are produced by our encoder (x265 parameters, item ids, grid layout, aux images)
    # (and the thumbnail item's own colour profile, ICC_Profile2, which libheif does not write for thumbnails)
    # HEIF auxiliary images (depth/disparity maps, HDR gain maps) are not carried; exiftool merges their XMP
    "heif-aux": (
        "XMP-HDRGainMap:*",
        "XMP-apdi:*",
        "XMP-depthData:*",
        "XMP-depthBlurEffect:*",
        "XMP-portraitLightingEffect:*",
    ),
    "heif-container": (
        "QuickTime:*",
        "Meta:*",
        "ItemList:*",
        "File:*",
        "Composite:*",
        "ICC-header2:*",
        "ICC_Profile2:*",
        "ICC-*2:*",
    ),
}

_lock = threading.Lock()
_proc: subprocess.Popen | None = None


def exiftool_path() -> str | None:
    return shutil.which("exiftool")


def _process() -> subprocess.Popen:
    global _proc
    if _proc is None or _proc.poll() is not None:
        exe = exiftool_path()
        if exe is None:
            raise RuntimeError("exiftool not found (Debian package libimage-exiftool-perl)")
        _proc = subprocess.Popen(
            [exe, "-stay_open", "True", "-@", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(_close)
    return _proc


def _close() -> None:
    global _proc
    if _proc is not None and _proc.poll() is None:
        try:
            _proc.stdin.write(b"-stay_open\nFalse\n")
            _proc.stdin.flush()
            _proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            _proc.kill()
    _proc = None


def _run(args: list[str]) -> bytes:
    with _lock:
        proc = _process()
        proc.stdin.write(("\n".join(args) + "\n-execute\n").encode())
        proc.stdin.flush()
        out = bytearray()
        while not out.endswith(b"{ready}\n"):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("exiftool stopped unexpectedly")
            out += line
        return bytes(out[: -len(b"{ready}\n")])


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, _Dups) else _Dups([prev])) + [value]
        else:
            out[key] = value
    return out


class _Dups(list):
    """Several values for one Group:Tag (exiftool -a)."""

    def __add__(self, other):  # keep the type
        return _Dups(list.__add__(self, other))


def _normalise(value: Any) -> Any:
    if isinstance(value, _Dups):
        return sorted((_normalise(v) for v in value), key=repr)
    if isinstance(value, str) and value.startswith("base64:"):
        return "sha256:" + hashlib.sha256(base64.b64decode(value[7:])).hexdigest()
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _suffix(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF":
        return ".webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    if data[4:8] == b"ftyp":
        return ".heic"
    return ".bin"


def exiftool_tags(source: str | os.PathLike | bytes, *, numeric: bool = True) -> dict[str, Any]:
    """Every tag exiftool reports for a file (path or bytes): {"Group1:Tag": value}, binaries as sha256."""
    tmp = None
    if isinstance(source, (bytes, bytearray)):
        fd, tmp = tempfile.mkstemp(suffix=_suffix(bytes(source)), prefix="dpe-exiftool-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(source)
        path = tmp
    else:
        path = os.fspath(source)
    try:
        args = ["-j", "-a", "-G1", "-b", "-u", "-charset", "filename=utf8"] + (["-n"] if numeric else []) + [path]
        raw = _run(args)
    finally:
        if tmp:
            os.unlink(tmp)
    records = json.loads(raw.decode("utf-8", "replace") or "[]", object_pairs_hook=_pairs)
    if not records:
        return {}
    return {k: _normalise(v) for k, v in records[0].items()}


def _allowed(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def metadata_diff(src_tags: dict[str, Any], dst_tags: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{Group:Tag: (src value, dst value)} for every tag that differs (missing on one side = None)."""
    out = {}
    for key in sorted(set(src_tags) | set(dst_tags)):
        a, b = src_tags.get(key), dst_tags.get(key)
        if a != b:
            out[key] = (a, b)
    return out


def assert_metadata_carried(
    src: str | os.PathLike | bytes | dict,
    dst: str | os.PathLike | bytes | dict,
    allowed_changes: tuple[str, ...] | list[str] = (),
    allowed_warnings: tuple[str, ...] = (),
) -> dict[str, tuple[Any, Any]]:
    """Assert dst carries every tag of src unchanged (exiftool's view), except ``allowed_changes``.

    src/dst: paths, bytes, or tag dicts from ``exiftool_tags``. Warnings exiftool raised on the source may
    disappear in dst (we do not reproduce defects), never appear, except those matching ``allowed_warnings``
    (fnmatch patterns). Returns the allowed differences.
    """
    src_tags = src if isinstance(src, dict) else exiftool_tags(src)
    dst_tags = dst if isinstance(dst, dict) else exiftool_tags(dst)
    patterns = tuple(ALWAYS_ALLOWED) + tuple(allowed_changes)
    diff = metadata_diff(src_tags, dst_tags)
    bad = {}
    for key, (a, b) in diff.items():
        if _allowed(key, patterns):
            continue
        if key == "ExifTool:Warning":
            src_w = set(a if isinstance(a, list) else [a] if a else [])
            dst_w = set(b if isinstance(b, list) else [b] if b else [])
            if all(w in src_w or any(fnmatch.fnmatchcase(str(w), p) for p in allowed_warnings) for w in dst_w):
                continue
        bad[key] = (a, b)
    if bad:
        lines = [f"  {k}: {_short(a)} -> {_short(b)}" for k, (a, b) in bad.items()]
        raise AssertionError(f"{len(bad)} tag(s) not carried unchanged:\n" + "\n".join(lines))
    return {k: v for k, v in diff.items() if k not in bad}


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def sha256_tree(root: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every file under root (for 'sources never touched' checks)."""
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _stat_tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def _testdata_hashes(testdata):
    before = sha256_tree(testdata)
    yield before
    after = sha256_tree(testdata)
    assert after == before, "test data changed: " + ", ".join(k for k in before if before[k] != after.get(k))


@pytest.fixture(autouse=True)
def pristine_testdata(request):
    """Sources byte-identical: sha256 of the test-data tree before/after each module, size+mtime per test.

    Import it into a test module (``from tests.core.exiftool_support import pristine_testdata``) to apply it.
    """
    if "testdata" not in request.fixturenames:
        yield
        return
    root = request.getfixturevalue("testdata")
    request.getfixturevalue("_testdata_hashes")
    before = _stat_tree(root)
    yield
    assert _stat_tree(root) == before, "a source file was modified"
