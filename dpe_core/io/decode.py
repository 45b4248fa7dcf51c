"""Bytes -> Photo: sniff the container, check the limits before each costly step, decode the pixels with Pillow
(pillow-heif for HEIF), collect every metadata block, turn the pixels upright once.

Order of the checks (``dpe_core.io.limits``): the input's size; the container's structure (PNG chunk CRCs,
HEIF top-level boxes); every metadata block's size - compressed PNG chunks (zTXt, iTXt, iCCP) by their inflated
size, measured while inflating in bounded pieces - before Pillow or our code inflates or keeps it; the pixel
count from the header; only then the pixels. Policy per format: dpe_core/io/photo.py, docs/photo-io.md.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin, UnidentifiedImageError

from dpe_core.io import exif as exiflib
from dpe_core.io import jpeg, png, rgbx, tiff
from dpe_core.io.errors import (
    CorruptPhotoError,
    PhotoError,
    TruncatedPhotoError,
    UnsupportedPhotoError,
)
from dpe_core.io.limits import DEFAULT_LIMITS, IoLimits, MetadataBudget, check_input_size, check_pixels, resolve
from dpe_core.io.orientation import orient
from dpe_core.io.photo import Carry, Photo
from dpe_core.io.webp import riff_chunks

log = logging.getLogger(__name__)

DECODABLE = {"JPEG", "MPO", "PNG", "TIFF", "WEBP", "HEIF"}

_PIL_LOCK = threading.Lock()


def _allow_pillow_text(limits: IoLimits) -> None:
    """Pillow's own PNG text limits (MAX_TEXT_CHUNK per zTXt/iTXt/iCCP chunk, MAX_TEXT_MEMORY per file) are at
    least ours: our scan, run first, refuses what exceeds ours with a specific error; Pillow's checks stay as
    the backstop. Only ever raised (process-wide), so concurrent decodes never see a lower value than theirs."""
    if PngImagePlugin.MAX_TEXT_CHUNK < limits.max_metadata_bytes:
        PngImagePlugin.MAX_TEXT_CHUNK = limits.max_metadata_bytes
    if PngImagePlugin.MAX_TEXT_MEMORY < limits.max_metadata_total_bytes:
        PngImagePlugin.MAX_TEXT_MEMORY = limits.max_metadata_total_bytes


_allow_pillow_text(DEFAULT_LIMITS)


def sniff(data: bytes) -> str | None:
    """Container format from the first bytes (JPEG, PNG, WEBP, TIFF, HEIF) or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data.startswith(png.SIGNATURE):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc", b"hevx"):
        return "HEIF"
    return None


def _check_size(name: str, size: tuple[int, int], limit: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise CorruptPhotoError(name, f"invalid image size {w}x{h}")
    check_pixels(name, w, h, limit)


def _open_pil(data: bytes, name: str, limit: int, kind: str | None) -> Image.Image:
    """Open (header only) with Pillow's own bomb check disabled: ours runs on the header size."""
    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            if kind is None:
                raise UnsupportedPhotoError(name, "not a recognised image format") from exc
            raise CorruptPhotoError(name, f"{kind} header cannot be parsed") from exc
        except Exception as exc:  # Pillow plugins raise many types on damaged headers
            if kind is None:
                raise UnsupportedPhotoError(name, f"not a supported photo format ({exc})") from exc
            raise _load_error(name, kind, exc) from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    _check_size(name, im.size, limit)
    return im


def _load_error(name: str, kind: str, exc: BaseException) -> PhotoError:
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if isinstance(exc, EOFError) or any(
        k in low for k in ("truncat", "premature", "past the end", "insufficient input")
    ):
        return TruncatedPhotoError(name, f"{kind} data ends early ({text})")
    return CorruptPhotoError(name, f"{kind} data cannot be decoded ({text})")


def _load(im: Image.Image, name: str, kind: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
    except PhotoError:
        raise
    except Exception as exc:  # decoders raise OSError/SyntaxError/ValueError/... on damaged data
        raise _load_error(name, kind, exc) from exc


_SWAP = {"B": "L", "L": "B"}


def _load_16bit_via_pillow(data: bytes, im: Image.Image, name: str, kind: str) -> np.ndarray | None:
    """Exact 16-bit RGB(A) pixels from a Pillow-decodable file Pillow would reduce to 8 bits.

    Pillow's unpackers for 16-bit RGB keep the high byte ("X;16B" of big-endian data). Decoding the same
    tile a second time with the opposite-endian unpacker keeps the *low* byte; together they give the exact
    16-bit values, with Pillow's own decompression, defiltering and interlace handling. Returns None when the
    source is not 16-bit RGB(A).
    """
    tile = im.tile[0] if im.tile else None
    if tile is None:
        return None
    args = tile.args
    raw = args if isinstance(args, str) else args[0]
    if not isinstance(raw, str) or ";16" not in raw or im.mode not in ("RGB", "RGBA"):
        return None
    base, suffix = raw.split(";16", 1)
    order = suffix[:1] or "B"
    if order == "N":
        order = "L" if np.little_endian else "B"
    if base == "RGBa":  # associated alpha: read premultiplied values, unpremultiply in 16 bits below
        base = "RGBA"
    hi_raw, lo_raw = f"{base};16{order}", f"{base};16{_SWAP[order]}"
    planes = []
    for rawmode in (hi_raw, lo_raw):
        fresh = _open_pil(data, name, 1 << 62, kind)
        t = fresh.tile[0]
        new_args = rawmode if isinstance(t.args, str) else (rawmode, *t.args[1:])
        fresh.tile = [t._replace(args=new_args)]
        _load(fresh, name, kind)
        planes.append(np.asarray(fresh))
    out = (planes[0].astype(np.uint16) << 8) | planes[1].astype(np.uint16)
    if raw.startswith("RGBa"):
        a = out[..., 3:4].astype(np.float64)
        rgb = np.where(a > 0, np.clip(np.rint(out[..., :3] * 65535.0 / np.maximum(a, 1)), 0, 65535), 0)
        out = np.concatenate([rgb.astype(np.uint16), out[..., 3:4]], axis=2)
    return out


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None, name: str) -> tuple[Image.Image, bytes | None, str | None]:
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            rgb = ImageCms.profileToProfile(im, src, dst, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
            return rgb, _srgb_profile(), None
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            return im.convert("RGB"), None, f"CMYK profile unusable ({exc}); plain CMYK->RGB conversion"
    return im.convert("RGB"), None, None


def _pil_to_arrays(im: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(rgb HxWx3, alpha or None, bit depth) from a loaded 8-bit or 16-bit-gray Pillow image."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        g = np.asarray(im)
        g = np.clip(g, 0, 65535).astype(np.uint16) if g.dtype != np.uint16 else g.astype(np.uint16)
        return np.repeat(g[:, :, None], 3, axis=2), None, 16
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
        mode = im.mode
    if mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode
    if mode == "La":
        im = im.convert("LA")
        mode = "LA"
    if mode == "RGBa":
        im = im.convert("RGBA")
        mode = "RGBA"
    a = np.asarray(im)
    if mode == "L":
        return np.repeat(a[:, :, None], 3, axis=2), None, 8
    if mode == "LA":
        return np.repeat(a[:, :, :1], 3, axis=2), np.ascontiguousarray(a[:, :, 1]), 8
    if mode == "RGB":
        return np.ascontiguousarray(a), None, 8
    if mode == "RGBA":
        return np.ascontiguousarray(a[:, :, :3]), np.ascontiguousarray(a[:, :, 3]), 8
    raise UnsupportedPhotoError(name, f"pixel mode {mode!r} is not supported")


def _tiff_of(exif: bytes | None) -> bytes | None:
    if not exif:
        return None
    return exiflib.strip_prefix(exif)[1] or None


def decode_photo(
    data: bytes, name: str, *, max_pixels: int | None = None, limits: IoLimits | None = None
) -> Photo:
    """Decode bytes into an upright Photo with all metadata. Raises a PhotoError subclass on failure.

    limits: IoLimits (default: the process's, from the environment); max_pixels overrides its pixel limit.
    Each limit is checked before the step it protects (see the module docstring).
    """
    lim = resolve(limits, max_pixels=max_pixels)
    limit = lim.max_pixels
    if not data:
        raise TruncatedPhotoError(name, "empty file (0 bytes)")
    check_input_size(name, len(data), lim.max_input_bytes)
    budget = MetadataBudget(name, lim)
    kind = sniff(data)
    if kind == "HEIF":
        from dpe_core.io.decode_heif import decode_heif  # its own module (it needs this one's helpers)

        return decode_heif(data, name, limit, budget)
    if kind == "TIFF":
        raw = tiff.is_raw(data)
        if raw:
            raise UnsupportedPhotoError(name, f"camera raw ({raw}) is not supported: develop it to a photo first")
    if kind == "PNG" and data[12:16] == b"IHDR" and len(data) >= 24:  # pixel count first, as for other formats
        _check_size(name, struct.unpack_from(">II", data, 16), limit)
    png_chunks = _scan_png(data, name, budget, lim) if kind == "PNG" else None
    im = _open_pil(data, name, limit, kind)
    fmt = im.format or kind or "unknown"
    if fmt not in DECODABLE:
        raise UnsupportedPhotoError(name, f"{fmt} is not a supported photo format (JPEG, PNG, TIFF, WebP, HEIF, MPO)")
    try:  # counting frames parses more of the file (TIFF: every IFD), which may be damaged
        frames = getattr(im, "n_frames", 1)
        if fmt == "MPO":
            im.seek(0)
    except Exception as exc:  # Pillow raises TypeError/KeyError/OSError/... on damaged frame directories
        raise _load_error(name, fmt, exc) from exc
    if fmt == "WEBP" and frames > 1:
        raise UnsupportedPhotoError(name, "animated WebP is not supported")
    if fmt == "TIFF" and frames > 1:
        log.info("%s: multi-page TIFF, only the first page is read", name)
    if fmt in ("JPEG", "MPO"):
        return _decode_jpeg(data, name, im, fmt, budget)
    if fmt == "PNG":
        if png_chunks is None:
            png_chunks = _scan_png(data, name, budget, lim)
        return _decode_png(data, name, im, png_chunks, lim)
    if fmt == "WEBP":
        return _decode_webp(data, name, im, budget)
    return _decode_tiff(data, name, im, budget)


def _scan_png(data: bytes, name: str, budget: MetadataBudget, limits: IoLimits) -> tuple[bytes, list[png.Chunk]]:
    """(IHDR, chunks) after the structure (CRCs) and every ancillary chunk's size were checked: compressed ones
    (zTXt, iTXt, iCCP) by their inflated size, inflating at most the remaining budget, before Pillow does."""
    try:
        ihdr, chunks = png.parse_chunks(data)
    except png.PngStructureError as exc:
        raise _load_error(name, "PNG", exc) from exc
    for c in chunks:
        if c.type in png.STRUCTURAL:
            continue
        what = png.describe(c)
        compressed = png.compressed_text(c)
        if compressed is None:
            budget.add(what, len(c.data))
            continue
        try:
            budget.add_compressed(what, compressed)
        except zlib.error as exc:
            raise CorruptPhotoError(name, f"{what}: compressed data is damaged ({exc})") from exc
    _allow_pillow_text(limits)
    return ihdr, chunks


def _finish(name, fmt, mode, im_or_arrays, exif, icc, xmp, iptc, carry, orientation_source="pixels", warns=()):
    rgb, alpha, depth = im_or_arrays
    stored = (rgb.shape[1], rgb.shape[0])
    rgb, alpha, exif, xmp, applied, w2 = orient(rgb, alpha, exif, xmp, orientation_source, name)
    if orientation_source == "container" and exiflib.swaps_axes(applied):
        stored = (rgb.shape[0], rgb.shape[1])  # the coded image (what EXIF dimensions describe) was turned
    return Photo(
        pixels=rgb,
        alpha=alpha,
        source_format=fmt,
        source_mode=mode,
        bit_depth=depth,
        exif=exif,
        icc_profile=icc,
        xmp=xmp,
        iptc=iptc,
        orientation_applied=applied,
        name=name,
        carry=carry,
        stored_size=stored,
        warnings=tuple(warns) + tuple(w2),
    )


_JPEG_LABELS = {"exif": "EXIF", "xmp": "XMP", "icc": "ICC profile", "iptc": "Photoshop/IPTC", "mpf": "MPF index",
                "adobe": "Adobe"}


def _check_jpeg_metadata(header: jpeg.JpegHeader, budget: MetadataBudget) -> None:
    """Blocks spread over several segments (ICC profile, extended XMP) count as one block."""
    sums: dict[str, int] = {}
    for seg in header.segments:
        kind = seg.kind()
        if kind == "other" and seg.payload.startswith(jpeg.XMP_EXT_ID):
            kind = "xmp"
        label = _JPEG_LABELS.get(kind)
        if label is None:
            marker = f"APP{seg.marker - jpeg.APP0}" if seg.marker != jpeg.COM else "COM"
            budget.add(f"JPEG {marker} segment", len(seg.payload))
        else:
            sums[label] = sums.get(label, 0) + len(seg.payload)
    for label, size in sums.items():
        budget.add(f"JPEG {label} segments", size)


def _decode_jpeg(data: bytes, name: str, im: Image.Image, fmt: str, budget: MetadataBudget) -> Photo:
    try:
        header = jpeg.parse_header(data)
    except jpeg.JpegStructureError as exc:
        raise _load_error(name, "JPEG", exc) from exc
    _check_jpeg_metadata(header, budget)
    # 8-bit RGB JPEG: decoded straight into an RGBX buffer whose RGB view is the photo (no repacking copy).
    mapped = rgbx.prepare_rgbx_decode(im) if fmt == "JPEG" else None
    _load(im, name, "JPEG")
    if fmt == "MPO":
        im = im.copy()
    if mapped is not None:
        buf, token = mapped
        if rgbx.loaded_into(im, token):
            arrays = (buf[..., :3], None, 8)
        else:  # Pillow allocated its own image: the ordinary path
            arrays = _pil_to_arrays(im.convert("RGB"), name)
        mode = "RGB"
    else:
        mode = im.mode
        arrays = None
    exif = icc = xmp = iptc = None
    blocks: list[jpeg.Segment] = []
    placed: set[str] = set()
    for seg in header.segments:
        k = seg.kind()
        if k == "mpf":
            continue
        if k in ("exif", "xmp", "iptc") and k not in placed:
            placed.add(k)
            if k == "exif":
                exif = seg.payload[len(jpeg.EXIF_ID) :]
            elif k == "xmp":
                xmp = seg.payload[len(jpeg.XMP_ID) :]
            else:
                iptc = seg.payload
            blocks.append(jpeg.Segment(seg.marker, b"@" + k.encode()))
            continue
        if k == "icc":
            if "icc" not in placed:
                placed.add("icc")
                blocks.append(jpeg.Segment(seg.marker, b"@icc"))
            continue
        blocks.append(seg)
    icc = im.info.get("icc_profile") or None
    warns = []
    icc_out = icc
    if mode == "CMYK":
        im, icc_out, w = _cmyk_to_rgb(im, icc, name)
        if w:
            warns.append(w)
    if arrays is None:
        arrays = _pil_to_arrays(im, name)
    carry = Carry("JPEG", tuple(blocks), {"progressive": header.progressive, "cmyk": mode == "CMYK"})
    return _finish(name, fmt, mode, arrays, exif, icc_out, xmp, iptc, carry, warns=warns)


def _decode_png(
    data: bytes, name: str, im: Image.Image, parsed: tuple[bytes, list[png.Chunk]], limits: IoLimits
) -> Photo:
    ihdr, chunks = parsed
    mode = im.mode
    arrays = None
    if mode in ("RGB", "RGBA") and ihdr[8] == 16:
        full = _load_16bit_via_pillow(data, im, name, "PNG")
        if full is not None:
            arrays = (
                np.ascontiguousarray(full[..., :3]),
                np.ascontiguousarray(full[..., 3]) if full.shape[2] == 4 else None,
                16,
            )
    if arrays is None:
        _load(im, name, "PNG")
        if mode == "LA" and ihdr[8] == 16:
            log.info("%s: 16-bit gray+alpha PNG read at 8 bits", name)
        arrays = _pil_to_arrays(im, name)
    exif = icc = xmp = None
    blocks = []
    placed: set[str] = set()
    info: dict[str, Any] = {"ihdr": ihdr}
    for c in chunks:
        if c.type in png.STRUCTURAL:
            continue
        k = c.kind()
        if k in placed or k == "other":
            blocks.append(c)
            continue
        placed.add(k)
        if k == "exif":
            prefix, exif = exiflib.strip_prefix(c.data)
            info["exif_prefix"] = prefix
        elif k == "icc":
            icc = im.info.get("icc_profile")
            info["icc_name"] = png.icc_name(c)
            if not icc:
                blocks.append(c)
                continue
        else:
            xmp = png.xmp_from_chunk(c, limits.max_metadata_bytes, name)
            if xmp is None:
                blocks.append(c)
                continue
        blocks.append(png.Chunk(c.type, b"@" + k.encode(), c.after_idat))
    carry = Carry("PNG", tuple(blocks), info)
    if ihdr[8] == 16 and mode in ("RGB", "RGBA", "LA"):
        mode += ";16"
    return _finish(name, "PNG", mode, arrays, exif, icc, xmp, None, carry)


_WEBP_LABELS = {b"EXIF": "EXIF", b"XMP ": "XMP", b"ICCP": "ICC profile"}


def _decode_webp(data: bytes, name: str, im: Image.Image, budget: MetadataBudget) -> Photo:
    chunks = riff_chunks(data)
    for ctype, body in chunks:
        if ctype in _WEBP_LABELS:
            budget.add(f"WebP {_WEBP_LABELS[ctype]} chunk", len(body))
    _load(im, name, "WebP")
    types = {c for c, _ in chunks}
    raw_exif = next((body for c, body in chunks if c == b"EXIF"), None)
    prefix, exif = exiflib.strip_prefix(raw_exif) if raw_exif else (b"", None)
    xmp = next((body for c, body in chunks if c == b"XMP "), None)
    icc = im.info.get("icc_profile") or None
    carry = Carry("WEBP", (), {"lossless": b"VP8L" in types, "exif_prefix": prefix})
    return _finish(name, "WEBP", im.mode, _pil_to_arrays(im, name), exif or None, icc, xmp, None, carry)


_TIFF_LABELS = {tiff.TAG_ICC: "ICC profile (tag 34675)", tiff.TAG_XMP: "XMP (tag 700)",
                tiff.TAG_IPTC: "IPTC (tag 33723)"}


def _tag_bytes(tags) -> int:
    return sum(len(t.value) + (_tag_bytes(t.sub) if t.sub else 0) for t in tags)


def _decode_tiff(data: bytes, name: str, im: Image.Image, budget: MetadataBudget) -> Photo:
    try:
        endian, descriptive, special = tiff.split_tiff(data)
    except (exiflib.ExifParseError, struct.error) as exc:
        raise CorruptPhotoError(name, f"TIFF directory cannot be read ({exc})") from exc
    for tag, label in _TIFF_LABELS.items():
        if tag in special:
            budget.add(f"TIFF {label}", len(special[tag].value))
    budget.add("TIFF descriptive tags (EXIF)", _tag_bytes(descriptive))
    mode = im.mode
    associated = bool(im.tile) and "RGBa" in str(im.tile[0].args)
    full = _load_16bit_via_pillow(data, im, name, "TIFF") if mode in ("RGB", "RGBA") else None
    warns = []
    icc = special[tiff.TAG_ICC].value if tiff.TAG_ICC in special else None
    if full is not None:
        arrays = (
            np.ascontiguousarray(full[..., :3]),
            np.ascontiguousarray(full[..., 3]) if full.shape[2] == 4 else None,
            16,
        )
        mode = mode + ";16"
    else:
        _load(im, name, "TIFF")
        if im.mode == "CMYK":
            im, icc, w = _cmyk_to_rgb(im, icc, name)
            if w:
                warns.append(w)
        arrays = _pil_to_arrays(im, name)
    exif = tiff.serialise(endian, descriptive) if descriptive else None
    xmp = special[tiff.TAG_XMP].value if tiff.TAG_XMP in special else None
    iptc = special[tiff.TAG_IPTC].value if tiff.TAG_IPTC in special else None
    info = {
        "endian": endian,
        "iptc_type": special[tiff.TAG_IPTC].type if tiff.TAG_IPTC in special else 7,
        "associated_alpha": associated,
    }
    return _finish(name, "TIFF", mode, arrays, exif, icc, xmp, iptc, Carry("TIFF", (), info), warns=warns)
