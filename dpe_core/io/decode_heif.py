"""HEIF/HEIC bytes -> Photo (pillow-heif / libheif): box structure checked, metadata items counted against the
budget, pixels upright from libheif (never turned again), 10/12-bit kept as 16-bit. Called by decode_photo."""

from __future__ import annotations

import io
import struct

import numpy as np

from dpe_core.io import exif as exiflib
from dpe_core.io.decode import _check_size, _finish, _load_error, _tiff_of
from dpe_core.io.errors import CorruptPhotoError, PhotoError, TruncatedPhotoError, UnsupportedPhotoError
from dpe_core.io.limits import MetadataBudget
from dpe_core.io.photo import Carry, Photo

try:  # optional at import time: GPU boxes may lack pillow-heif; HEIF then raises UnsupportedPhotoError
    import pillow_heif
except ImportError:  # pragma: no cover
    pillow_heif = None


def _check_boxes(data: bytes, name: str) -> None:
    """Top-level ISO-BMFF boxes must fit the file: libheif decodes some truncated files to garbage."""
    pos, n = 0, len(data)
    while pos + 8 <= n:
        size, btype = struct.unpack_from(">I4s", data, pos)
        if size == 1 and pos + 16 <= n:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif size == 0:
            size = n - pos
        if size < 8 or not all(32 <= c < 127 for c in btype):
            raise CorruptPhotoError(name, f"invalid HEIF box {btype!r} (size {size}) at offset {pos}")
        if pos + size > n:
            raise TruncatedPhotoError(
                name, f"HEIF box {btype.decode('latin1')!r} needs {pos + size} bytes, file has {n}"
            )
        pos += size


def _check_heif_metadata(info: dict, budget: MetadataBudget) -> None:
    """Metadata items as libheif hands them over (stored items, or deflate-encoded ones libheif inflated)."""
    for key, label in (("exif", "EXIF item"), ("xmp", "XMP item"), ("icc_profile", "ICC profile")):
        if info.get(key):
            budget.add(f"HEIF {label}", len(info[key]))
    for item in info.get("metadata", []) or []:
        budget.add(f"HEIF {item.get('type') or 'metadata'} item", len(item.get("data") or b""))


def decode_heif(data: bytes, name: str, limit: int, budget: MetadataBudget) -> Photo:
    """Decode HEIF bytes into an upright Photo with all metadata (limit: max pixels). Raises PhotoError."""
    if pillow_heif is None:
        raise UnsupportedPhotoError(name, "HEIF support needs the pillow-heif package")
    _check_boxes(data, name)
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
        img = heif[heif.primary_index]
        _check_size(name, img.size, limit)
        _check_heif_metadata(img.info, budget)
        arr = np.asarray(img)
    except PhotoError:
        raise
    except Exception as exc:  # pillow-heif raises ValueError/RuntimeError/SyntaxError with libheif's text
        raise _load_error(name, "HEIF", exc) from exc
    info = img.info
    mode = img.mode
    depth = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (1, 2):
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(arr[:, :, :3])
    alpha = np.ascontiguousarray(arr[:, :, -1]) if channels in (2, 4) else None
    exif = _tiff_of(info.get("exif"))
    meta = [dict(m) for m in info.get("metadata", []) or []]
    iptc = next((m["data"] for m in meta if m.get("type") == "iptc"), None)
    others = tuple(m for m in meta if m.get("type") != "iptc")
    carry_info = {
        "bit_depth": info.get("bit_depth", depth),
        "thumbnails": tuple(info.get("thumbnails", []) or ()),
        "icc_profile_type": info.get("icc_profile_type"),
        "nclx_profile": info.get("nclx_profile"),
        "original_orientation": exiflib.read_orientation(exif),
        "chroma": info.get("chroma"),
    }
    carry = Carry("HEIF", others, carry_info)
    return _finish(
        name, "HEIF", mode, (rgb, alpha, depth), exif, info.get("icc_profile") or None, info.get("xmp") or None,
        iptc, carry, orientation_source="container",
    )  # fmt: skip
