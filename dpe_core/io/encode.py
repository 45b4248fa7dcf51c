"""Photo -> bytes, fully in memory: pixels encoded by Pillow / pillow-heif / our 16-bit PNG and TIFF writers,
the source's metadata spliced back byte for byte (policy: dpe_core/io/photo.py, docs/photo-io.md).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import struct
from typing import Any

import numpy as np
from PIL import Image

from dpe_core.io import exif as exiflib
from dpe_core.io import jpeg, png, rgbx, tiff
from dpe_core.io import xmp as xmplib
from dpe_core.io.errors import MetadataError, PhotoError, UnsupportedPhotoError
from dpe_core.io.photo import Photo, convert_depth, resize_plane
from dpe_core.io.webp import riff_replace

try:  # optional at import time: GPU boxes may lack pillow-heif; HEIF then raises UnsupportedPhotoError
    import pillow_heif
except ImportError:  # pragma: no cover
    pillow_heif = None

log = logging.getLogger(__name__)

HEIF_PRESET = "ultrafast"
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "MPO": "JPEG"}
WRITABLE = {"JPEG", "PNG", "TIFF", "WEBP", "HEIF"}
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _target_format(photo: Photo, format: str | None) -> str:
    fmt = (format or photo.source_format or "JPEG").upper()
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in WRITABLE:
        raise UnsupportedPhotoError(photo.name, f"cannot write {fmt} (writable: {', '.join(sorted(WRITABLE))})")
    return fmt


def _is_gray_source(photo: Photo) -> bool:
    return photo.source_mode.split(";")[0] in GRAY_MODES


def _luma(rgb: np.ndarray) -> np.ndarray:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    top = 65535 if rgb.dtype == np.uint16 else 255
    return np.clip(np.rint(y), 0, top).astype(rgb.dtype)


def _flatten_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    top = 65535.0 if rgb.dtype == np.uint16 else 255.0
    a = alpha.astype(np.float32)[..., None] / top
    out = rgb.astype(np.float32) * a + top * (1.0 - a)
    return np.clip(np.rint(out), 0, top).astype(rgb.dtype)


def _exif_for_output(photo: Photo, out_size: tuple[int, int]) -> bytes | None:
    """Photo.exif with what must change patched: dimensions (if the size changed), stale thumbnail."""
    exif = photo.exif
    if not exif:
        return exif
    resized = photo.stored_size is not None and tuple(out_size) != tuple(photo.stored_size)
    if photo.stored_size is None and photo.pixels_changed:
        resized = True
    stale_thumb = photo.pixels_changed or photo.orientation_applied not in (1, None)
    try:
        if resized:
            exif = exiflib.patch_exif(exif, pixel_size=out_size)
        if stale_thumb:
            exif = _regenerate_thumbnail(exif, photo)
    except (exiflib.ExifParseError, struct.error) as exc:
        log.warning("%s: EXIF left as read: %s", photo.name, exc)
    return exif


def _regenerate_thumbnail(exif: bytes, photo: Photo) -> bytes:
    span = exiflib.thumbnail_span(exif)
    if span is None:
        return exif
    start, length = span
    old = exiflib.strip_prefix(exif)[1][start : start + length]
    try:
        with Image.open(io.BytesIO(old)) as t:
            tw, th = t.size
    except Exception:
        tw, th = 160, 120
    if exiflib.swaps_axes(photo.orientation_applied or 1) and not photo.pixels_changed:
        tw, th = th, tw
    src = rgbx.to_pil(convert_depth(photo.pixels, np.uint8))
    box = max(tw, th)
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25):
        thumb = src.copy()
        thumb.thumbnail((max(8, int(box * scale)), max(8, int(box * scale))), Image.Resampling.LANCZOS)
        for quality in (85, 70, 50, 30):
            buf = io.BytesIO()
            thumb.save(buf, "JPEG", quality=quality)
            if buf.tell() <= length:
                return exiflib.patch_exif(exif, thumbnail=buf.getvalue(), thumbnail_size=thumb.size)
    log.warning("%s: regenerated thumbnail does not fit the old space; old thumbnail blanked", photo.name)
    return exif


def encode_photo(
    photo: Photo,
    *,
    format: str | None = None,
    quality: int = 95,
    subsampling: str = "4:4:4",
    heif_preset: str = HEIF_PRESET,
    heif_chroma: str | None = None,
) -> bytes:
    """Encode a Photo fully in memory (the bytes write_photo stores). See the module docstring for policy.

    quality: JPEG/WebP(lossy)/HEIF quality. subsampling: JPEG chroma subsampling. heif_chroma: HEIF chroma
    ("4:2:0", "4:2:2", "4:4:4"); default the source's (4:2:0 for new HEIFs): HEVC 4:4:4 needs the RExt
    profile that many phone decoders lack. heif_preset: x265 preset (speed/size trade-off).
    """
    fmt = _target_format(photo, format)
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"subsampling must be one of {sorted(SUBSAMPLING)}, got {subsampling!r}")
    rgb, alpha = photo.pixels, photo.alpha
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        alpha = resize_plane(alpha, rgb.shape[1], rgb.shape[0])
    if alpha is not None:
        alpha = convert_depth(alpha, rgb.dtype)
    out_size = (rgb.shape[1], rgb.shape[0])
    exif = _exif_for_output(photo, out_size)
    xmp = photo.xmp
    if xmp and photo.stored_size is not None and out_size != tuple(photo.stored_size):
        xmp = xmplib.patch(xmp, pixel_size=out_size)
    gray = _is_gray_source(photo)
    same = photo.carry is not None and photo.carry.format == fmt
    try:
        if fmt == "JPEG":
            return _encode_jpeg(photo, rgb, alpha, gray, exif, xmp, quality, subsampling, same)
        if fmt == "PNG":
            return _encode_png(photo, rgb, alpha, gray, exif, xmp, same)
        if fmt == "WEBP":
            return _encode_webp(photo, rgb, alpha, exif, xmp, quality, same)
        if fmt == "TIFF":
            return _encode_tiff(photo, rgb, alpha, gray, exif, xmp, same)
        return _encode_heif(photo, rgb, alpha, gray, exif, xmp, quality, heif_chroma, heif_preset, same)
    except PhotoError:
        raise
    except (OSError, ValueError) as exc:
        raise MetadataError(photo.name, f"{fmt} encoding failed: {exc}") from exc


def _encode_jpeg(photo, rgb, alpha, gray, exif, xmp, quality, subsampling, same) -> bytes:
    if alpha is not None:
        rgb = _flatten_on_white(rgb, alpha)
    rgb8 = convert_depth(rgb, np.uint8)
    # RGB: the pixels' own RGBX buffer when they are the view of one (decoded or enhanced here), no copy.
    img = Image.fromarray(_luma(rgb8), mode="L") if gray else rgbx.to_pil(rgb8)
    progressive = bool(same and photo.carry.info.get("progressive"))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=SUBSAMPLING[subsampling], progressive=progressive)
    encoded = buf.getvalue()
    if exif and len(exif) + len(jpeg.EXIF_ID) > jpeg.MAX_PAYLOAD:
        raise MetadataError(
            photo.name, f"EXIF block of {len(exif)} bytes does not fit a JPEG APP1 segment (max 65527); not dropped"
        )
    if xmp and len(xmp) + len(jpeg.XMP_ID) > jpeg.MAX_PAYLOAD:
        raise MetadataError(photo.name, f"XMP packet of {len(xmp)} bytes does not fit a JPEG APP1 segment")
    fills = {
        b"@exif": [jpeg.Segment(jpeg.APP1, jpeg.EXIF_ID + exif)] if exif else [],
        b"@xmp": [jpeg.Segment(jpeg.APP1, jpeg.XMP_ID + xmp)] if xmp else [],
        b"@icc": jpeg.icc_segments(photo.icc_profile) if photo.icc_profile else [],
        b"@iptc": [jpeg.Segment(jpeg.APP13, photo.iptc)]
        if photo.iptc and photo.iptc.startswith(jpeg.PHOTOSHOP_ID)
        else [],
    }
    if same:
        segments, used = [], set()
        for seg in photo.carry.blocks:
            if seg.payload in fills:
                segments += fills[seg.payload]
                used.add(seg.payload)
            elif seg.kind() == "adobe":
                segments.append(jpeg.Segment(seg.marker, jpeg.patch_adobe_transform(seg.payload, 0 if gray else 1)))
            else:
                segments.append(seg)
        for key in (b"@exif", b"@icc", b"@xmp", b"@iptc"):  # blocks set on the Photo that the source lacked
            if key not in used:
                segments += fills[key]
    else:
        own = jpeg.parse_header(encoded).segments  # keep the encoder's JFIF header for density
        segments = [s for s in own if s.kind() == "other"] + fills[b"@exif"] + fills[b"@icc"] + fills[b"@xmp"]
        segments += fills[b"@iptc"]
    return jpeg.splice(encoded, segments)


def _encode_png(photo, rgb, alpha, gray, exif, xmp, same) -> bytes:
    planes = [_luma(rgb)[..., None]] if gray else [rgb]
    if alpha is not None:
        planes.append(alpha[..., None])
    arr = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
    if arr.dtype == np.uint8:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, mode=mode).save(buf, "PNG", compress_level=6)
        fresh = buf.getvalue()
    else:
        fresh = png.encode_png(arr)
    new_ihdr = png.parse_chunks(fresh)[0]
    info = photo.carry.info if same else {}
    fills = {
        b"@exif": [png.Chunk(b"eXIf", info.get("exif_prefix", b"") + exif)] if exif else [],
        b"@icc": [png.icc_chunk(photo.icc_profile, info.get("icc_name", b"ICC Profile"))] if photo.icc_profile else [],
        b"@xmp": [png.xmp_chunk(xmp)] if xmp else [],
    }
    chunks, used = [], set()
    if same:
        for c in photo.carry.blocks:
            if c.data in fills:
                chunks += [dataclasses.replace(x, after_idat=c.after_idat) for x in fills[c.data]]
                used.add(c.data)
            else:
                chunks.append(c)
    for key in (b"@icc", b"@exif", b"@xmp"):
        if key not in used:
            chunks += fills[key]
    if photo.icc_profile:  # iCCP and sRGB are mutually exclusive
        chunks = [c for c in chunks if c.type != b"sRGB" or not any(x.type == b"iCCP" for x in chunks)]
    changed = not same or info.get("ihdr", b"")[8:10] != new_ihdr[8:10]
    return png.rebuild(fresh, chunks, drop_colour_dependent=changed)


def _encode_webp(photo, rgb, alpha, exif, xmp, quality, same) -> bytes:
    rgb8 = convert_depth(rgb, np.uint8)
    if alpha is not None:
        img = Image.fromarray(np.dstack([rgb8, convert_depth(alpha, np.uint8)]), mode="RGBA")
    else:
        img = Image.fromarray(rgb8, mode="RGB")
    lossless = bool(same and photo.carry.info.get("lossless"))
    # exact: keep the RGB under transparent pixels (the encoder would otherwise rewrite it)
    kw: dict[str, Any] = {"lossless": lossless, "quality": 100 if lossless else quality, "method": 4, "exact": True}
    if photo.icc_profile:
        kw["icc_profile"] = photo.icc_profile
    if exif:
        kw["exif"] = exif
    if xmp:
        kw["xmp"] = xmp
    buf = io.BytesIO()
    img.save(buf, "WEBP", **kw)
    data = buf.getvalue()
    prefix = photo.carry.info.get("exif_prefix", b"") if same else b""
    if exif and prefix:
        data = riff_replace(data, b"EXIF", prefix + exif)
    return data


def _encode_tiff(photo, rgb, alpha, gray, exif, xmp, same) -> bytes:
    planes = [_luma(rgb)[..., None]] if gray else [rgb]
    if alpha is not None:
        planes.append(alpha[..., None])
    arr = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
    endian = photo.carry.info.get("endian", "<") if same else "<"
    descriptive: list[tiff.Tag] = []
    if exif:
        try:  # raw values are in the EXIF block's byte order: the file takes that order
            endian, descriptive = tiff.exif_tags(exiflib.strip_prefix(exif)[1])
        except (exiflib.ExifParseError, struct.error) as exc:
            raise MetadataError(photo.name, f"EXIF cannot be written into TIFF tags ({exc})") from exc
    extra = []
    if photo.icc_profile:
        extra.append(tiff.Tag(tiff.TAG_ICC, 7, len(photo.icc_profile), photo.icc_profile))
    if xmp:
        extra.append(tiff.Tag(tiff.TAG_XMP, 1, len(xmp), xmp))
    if photo.iptc:
        typ = photo.carry.info.get("iptc_type", 7) if same else 7
        size = tiff.TYPE_SIZES.get(typ, 1)
        body = photo.iptc + bytes(-len(photo.iptc) % size)
        extra.append(tiff.Tag(tiff.TAG_IPTC, typ, len(body) // size, body))
    return tiff.encode_tiff(arr, endian=endian, descriptive=descriptive, extra=extra)


def _encode_heif(photo, rgb, alpha, gray, exif, xmp, quality, chroma, preset, same) -> bytes:
    if pillow_heif is None:
        raise UnsupportedPhotoError(photo.name, "HEIF output needs the pillow-heif package")
    if gray and alpha is None and rgb.dtype == np.uint8:
        arr, mode = _luma(rgb), "L"
    else:
        arr = np.dstack([rgb, alpha]) if alpha is not None else rgb
        mode = ("RGBA" if alpha is not None else "RGB") + (";16" if rgb.dtype == np.uint16 else "")
    arr = np.ascontiguousarray(arr)
    info = photo.carry.info if same else {}
    kw: dict[str, Any] = {
        "quality": quality,
        "chroma": {"4:4:4": 444, "4:2:2": 422, "4:2:0": 420}[chroma] if chroma else int(info.get("chroma") or 420),
        "enc_params": {"preset": preset},
    }
    if rgb.dtype == np.uint16:
        kw["bit_depth"] = 12 if info.get("bit_depth", 10) > 10 else 10
    if exif:
        kw["exif"] = exif
    if xmp:
        kw["xmp"] = xmp
    if photo.icc_profile:
        kw["icc_profile"] = photo.icc_profile
        kw["icc_profile_type"] = info.get("icc_profile_type") or "prof"
    elif info.get("nclx_profile"):
        kw["nclx_profile"] = info["nclx_profile"]
    metadata = [dict(m) for m in (photo.carry.blocks if same else ())]
    if photo.iptc:
        metadata.append({"type": "iptc", "content_type": "", "data": photo.iptc})
    if metadata:
        kw["metadata"] = metadata
    if info.get("thumbnails"):
        kw["thumbnails"] = list(info["thumbnails"])
    heif = pillow_heif.from_bytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())
    buf = io.BytesIO()
    heif.save(buf, **kw)
    return buf.getvalue()
