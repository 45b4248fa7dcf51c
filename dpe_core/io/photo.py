"""Photo decode/encode that keeps every byte of metadata, and the per-format policy.

The same text, with the measured numbers and the must-change tag list, is in docs/photo-io.md.

What a Photo is
    ``pixels``: HxWx3 RGB, uint8 or uint16 (16-bit sources stay 16-bit), upright: the orientation was
    applied exactly once at decode. ``alpha`` (HxW, same dtype) is never enhanced; it is reattached on
    write. ``exif`` is the raw TIFF-structured EXIF block (no ``Exif\\0\\0`` prefix) with IFD0/IFD1
    Orientation already set to 1 when the pixels were turned; ``icc_profile``, ``xmp``, ``iptc`` are raw
    bytes. Everything else the container held (JPEG APPn/COM segments, PNG ancillary chunks, TIFF tags, HEIF
    metadata items) rides along in ``carry`` and is written back verbatim when the output has the source's
    format.

Orientation (never twice, never a tag that disagrees with the pixels)
    * JPEG, MPO, PNG, WebP, TIFF: the stored pixels are as the sensor saw them; we read IFD0 Orientation
      (XMP tiff:Orientation only when EXIF has none), turn the pixels once, and set the tag(s) to 1: IFD0 and
      IFD1 Orientation in the raw EXIF (patched in place) and tiff:Orientation in XMP.
    * HEIF/HEIC: the container's transforms (irot/imir) are mandatory and libheif applies them while
      decoding (iPhones store Orientation 6 in EXIF *and* an irot box); we never turn again. The EXIF/XMP
      tags are set to 1 like above, so output and tags agree; ``orientation_applied`` reports the value the
      EXIF tag had.

Per format: what is enhanced / carried / written (default output format = source format)
    * JPEG (baseline, progressive): RGB enhanced. Every APPn/COM segment is carried in source order (JFIF,
      EXIF incl. maker notes and GPS, XMP and extended XMP, ICC, Photoshop/IPTC, vendor segments), MPF is
      dropped (the appended frames/previews are not carried). Written as JPEG quality 95, 4:4:4, progressive
      when the source was.
    * JPEG grayscale: enhanced as RGB (gray replicated), written back as grayscale (ITU-R 601 luma); its
      gray ICC profile stays valid and is carried.
    * JPEG CMYK/YCCK: converted to sRGB through its embedded ICC profile (plain inversion when there is
      none), enhanced, written as an RGB (YCbCr) JPEG carrying an sRGB profile; the CMYK profile cannot
      describe RGB pixels and is not carried; the Adobe segment's transform flag becomes YCbCr.
    * MPO (stereo/multi-frame JPEG): the first frame is enhanced and written as a JPEG (other frames and
      the MPF index are not carried).
    * PNG 8/16-bit gray/RGB(A): enhanced at the source bit depth, written at the same depth and colour type;
      every ancillary chunk (tEXt/zTXt/iTXt, eXIf, iCCP, gAMA, cHRM, sRGB, pHYs, tIME ...) is carried,
      before or after the image data as in the source. Palette PNGs (and tRNS colour keys) are decoded to
      RGB + alpha and written as truecolour (+alpha): re-quantising enhanced colours to a palette would
      damage them. Interlaced sources are written non-interlaced.
    * TIFF 8/16-bit gray/RGB(A), CMYK (as JPEG CMYK): descriptive tags, EXIF/GPS sub-IFDs, ICC, XMP, IPTC
      carried; structural tags rewritten; one Deflate strip (lossless). Associated alpha is unpremultiplied
      for the enhancer and written as unassociated alpha.
    * WebP (lossy/lossless, alpha): EXIF, ICC, XMP chunks carried; lossless sources stay lossless, lossy
      ones are written at ``quality``.
    * HEIF/HEIC (8-bit, 10/12-bit as 16-bit, alpha, monochrome): EXIF, XMP, ICC (or the nclx colour
      description), IPTC and other metadata items carried; thumbnails regenerated at the source's sizes;
      depth maps and HDR gain maps (auxiliary images describing the *old* pixels) are not carried. Written
      with x265 at ``quality`` (preset ``ultrafast``: see docs/photo-io.md for the measured trade-off).
    * Anything else (GIF, ICO, BMP, camera raw such as CR2/DNG) raises UnsupportedPhotoError.

What must change on write (everything else is byte-identical)
    * pixel dimensions (EXIF PixelX/YDimension, IFD0 ImageWidth/Length, XMP dimension properties) - only
      when the written size differs from the stored size of the source (rotation or resize);
    * Orientation (IFD0, IFD1, XMP) - set to 1 when the pixels were turned;
    * the EXIF thumbnail (IFD1) - regenerated from the written pixels, inside its old space so no other
      byte moves, when the pixels changed (``with_pixels``) or were turned; kept as-is otherwise;
    * the encoding itself (quality, subsampling, Huffman tables, compression, container boxes).

Limits
    ``max_pixels`` (default ``DEFAULT_MAX_PIXELS`` = 100 MP, env ``DPE_MAX_PIXELS``) is checked from the
    header before any pixel is decoded: a larger image raises DecompressionBombError unless the caller
    passes a larger ``max_pixels`` explicitly.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import struct
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from dpe_core.io import exif as exiflib
from dpe_core.io import jpeg, png, storage, tiff
from dpe_core.io import xmp as xmplib
from dpe_core.io.errors import (
    CorruptPhotoError,
    DecompressionBombError,
    MetadataError,
    PhotoError,
    StorageError,
    TruncatedPhotoError,
    UnsupportedPhotoError,
)

if TYPE_CHECKING:
    from dpe_core.io.summary import ExifSummary

try:  # optional at import time: GPU boxes may lack pillow-heif; HEIF then raises UnsupportedPhotoError
    import pillow_heif
except ImportError:  # pragma: no cover
    pillow_heif = None

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = int(os.environ.get("DPE_MAX_PIXELS", "100000000"))
HEIF_PRESET = "ultrafast"
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "MPO": "JPEG"}
WRITABLE = {"JPEG", "PNG", "TIFF", "WEBP", "HEIF"}
DECODABLE = {"JPEG", "MPO", "PNG", "TIFF", "WEBP", "HEIF"}
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

_PIL_LOCK = threading.Lock()


@dataclass(frozen=True)
class Carry:
    """Container metadata carried verbatim when the output has the source's format.

    blocks: JPEG ``jpeg.Segment`` list (EXIF/XMP/ICC/IPTC segments stand as placeholders), PNG ``png.Chunk``
    list (same), TIFF ``tiff.Tag`` list (non-structural tags not in Photo.exif), HEIF metadata items.
    info: format facts (progressive, lossless, exif prefix, thumbnail sizes, ICC chunk name ...).
    """

    format: str
    blocks: tuple = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Photo:
    pixels: np.ndarray
    alpha: np.ndarray | None = None
    source_format: str = "JPEG"
    source_mode: str = "RGB"
    bit_depth: int = 8
    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None
    orientation_applied: int = 1
    name: str = ""
    carry: Carry | None = None
    stored_size: tuple[int, int] | None = None  # (width, height) as stored in the source, before orientation
    pixels_changed: bool = False  # set by with_pixels: stale thumbnails are regenerated on write
    warnings: tuple[str, ...] = ()

    def __post_init__(self):
        _check_pixels(self.pixels, self.name)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def with_pixels(self, new_pixels: np.ndarray) -> Photo:
        """Same metadata, new pixels (HxWx3 uint8/uint16, any size). Alpha is resized to match if needed."""
        _check_pixels(new_pixels, self.name)
        alpha = self.alpha
        if alpha is not None and alpha.shape != new_pixels.shape[:2]:
            alpha = _resize_plane(alpha, new_pixels.shape[1], new_pixels.shape[0])
        if alpha is not None and alpha.dtype != new_pixels.dtype:
            alpha = _convert_depth(alpha, new_pixels.dtype)
        return dataclasses.replace(
            self,
            pixels=new_pixels,
            alpha=alpha,
            pixels_changed=True,
            bit_depth=16 if new_pixels.dtype == np.uint16 else 8,
        )

    @property
    def metadata(self) -> ExifSummary:
        from dpe_core.io.summary import read_exif_summary

        return read_exif_summary(self)


def _check_pixels(pixels: np.ndarray, name: str) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{name}: pixels must be an HxWx3 array, got {getattr(pixels, 'shape', type(pixels))}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{name}: pixels must be uint8 or uint16, got {pixels.dtype}")


def _convert_depth(a: np.ndarray, dtype) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if dtype == np.uint16:
        return a.astype(np.uint16) * 257
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    if plane.dtype == np.uint16:
        img = Image.fromarray(plane.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
        return np.clip(np.rint(np.asarray(img)), 0, 65535).astype(np.uint16)
    return np.asarray(Image.fromarray(plane, mode="L").resize((width, height), Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------------------------- decode


def sniff(data: bytes) -> str | None:
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


def _limit(max_pixels: int | None) -> int:
    return DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)


def _check_size(name: str, size: tuple[int, int], limit: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise CorruptPhotoError(name, f"invalid image size {w}x{h}")
    if w * h > limit:
        raise DecompressionBombError(
            name,
            f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of {limit / 1e6:.1f} MP "
            "(pass a larger max_pixels to process it)",
        )


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


def _orient(rgb, alpha, exif, xmp, orientation_source: str, name: str):
    """Apply the EXIF (else XMP) orientation once; return pixels, alpha, exif, xmp, applied, warnings."""
    warns = []
    value = exiflib.read_orientation(exif)
    if value is None:
        value = xmplib.read_orientation(xmp)
    if value is None or value == 1:
        return rgb, alpha, exif, xmp, 1, warns
    if orientation_source == "pixels":
        rgb = exiflib.apply_orientation(rgb, value)
        alpha = exiflib.apply_orientation(alpha, value) if alpha is not None else None
    if exif:
        try:
            exif = exiflib.patch_exif(exif, orientation=1)
        except (exiflib.ExifParseError, struct.error) as exc:
            warns.append(f"EXIF orientation could not be reset ({exc})")
    if xmp:
        xmp = xmplib.patch(xmp, orientation=1)
    return rgb, alpha, exif, xmp, value, warns


def _tiff_of(exif: bytes | None) -> bytes | None:
    if not exif:
        return None
    return exiflib.strip_prefix(exif)[1] or None


def decode_photo(data: bytes, name: str, *, max_pixels: int | None = None) -> Photo:
    """Decode bytes into an upright Photo with all metadata. Raises a PhotoError subclass on failure."""
    limit = _limit(max_pixels)
    if not data:
        raise TruncatedPhotoError(name, "empty file (0 bytes)")
    kind = sniff(data)
    if kind == "HEIF":
        return _decode_heif(data, name, limit)
    if kind == "TIFF":
        raw = tiff.is_raw(data)
        if raw:
            raise UnsupportedPhotoError(name, f"camera raw ({raw}) is not supported: develop it to a photo first")
    im = _open_pil(data, name, limit, kind)
    fmt = im.format or kind or "unknown"
    if fmt not in DECODABLE:
        raise UnsupportedPhotoError(name, f"{fmt} is not a supported photo format (JPEG, PNG, TIFF, WebP, HEIF, MPO)")
    if fmt == "WEBP" and getattr(im, "n_frames", 1) > 1:
        raise UnsupportedPhotoError(name, "animated WebP is not supported")
    if fmt == "MPO":
        im.seek(0)
    if fmt == "TIFF" and getattr(im, "n_frames", 1) > 1:
        log.info("%s: multi-page TIFF, only the first page is read", name)
    if fmt in ("JPEG", "MPO"):
        return _decode_jpeg(data, name, im, fmt, limit)
    if fmt == "PNG":
        return _decode_png(data, name, im, limit)
    if fmt == "WEBP":
        return _decode_webp(data, name, im)
    return _decode_tiff(data, name, im)


def _finish(name, fmt, mode, im_or_arrays, exif, icc, xmp, iptc, carry, orientation_source="pixels", warns=()):
    rgb, alpha, depth = im_or_arrays
    stored = (rgb.shape[1], rgb.shape[0])
    rgb, alpha, exif, xmp, applied, w2 = _orient(rgb, alpha, exif, xmp, orientation_source, name)
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


def _decode_jpeg(data: bytes, name: str, im: Image.Image, fmt: str, limit: int) -> Photo:
    try:
        header = jpeg.parse_header(data)
    except jpeg.JpegStructureError as exc:
        raise _load_error(name, "JPEG", exc) from exc
    _load(im, name, "JPEG")
    if fmt == "MPO":
        im = im.copy()
    mode = im.mode
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
    arrays = _pil_to_arrays(im, name)
    carry = Carry("JPEG", tuple(blocks), {"progressive": header.progressive, "cmyk": mode == "CMYK"})
    return _finish(name, fmt, mode, arrays, exif, icc_out, xmp, iptc, carry, warns=warns)


def _decode_png(data: bytes, name: str, im: Image.Image, limit: int) -> Photo:
    try:
        ihdr, chunks = png.parse_chunks(data)
    except png.PngStructureError as exc:
        raise _load_error(name, "PNG", exc) from exc
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
            xmp = png.xmp_from_chunk(c)
            if xmp is None:
                blocks.append(c)
                continue
        blocks.append(png.Chunk(c.type, b"@" + k.encode(), c.after_idat))
    carry = Carry("PNG", tuple(blocks), info)
    if ihdr[8] == 16 and mode in ("RGB", "RGBA", "LA"):
        mode += ";16"
    return _finish(name, "PNG", mode, arrays, exif, icc, xmp, None, carry)


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 12
    while pos + 8 <= len(data):
        ctype, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        out.append((ctype, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def _decode_webp(data: bytes, name: str, im: Image.Image) -> Photo:
    _load(im, name, "WebP")
    chunks = _riff_chunks(data)
    types = {c for c, _ in chunks}
    raw_exif = next((body for c, body in chunks if c == b"EXIF"), None)
    prefix, exif = exiflib.strip_prefix(raw_exif) if raw_exif else (b"", None)
    xmp = next((body for c, body in chunks if c == b"XMP "), None)
    icc = im.info.get("icc_profile") or None
    carry = Carry("WEBP", (), {"lossless": b"VP8L" in types, "exif_prefix": prefix})
    return _finish(name, "WEBP", im.mode, _pil_to_arrays(im, name), exif or None, icc, xmp, None, carry)


def _decode_tiff(data: bytes, name: str, im: Image.Image) -> Photo:
    try:
        endian, descriptive, special = tiff.split_tiff(data)
    except (exiflib.ExifParseError, struct.error) as exc:
        raise CorruptPhotoError(name, f"TIFF directory cannot be read ({exc})") from exc
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


def _decode_heif(data: bytes, name: str, limit: int) -> Photo:
    if pillow_heif is None:
        raise UnsupportedPhotoError(name, "HEIF support needs the pillow-heif package")
    _check_boxes(data, name)
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
        img = heif[heif.primary_index]
        _check_size(name, img.size, limit)
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


# ----------------------------------------------------------------------------------------------- encode


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
    src = Image.fromarray(_convert_depth(photo.pixels, np.uint8))
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
        alpha = _resize_plane(alpha, rgb.shape[1], rgb.shape[0])
    if alpha is not None:
        alpha = _convert_depth(alpha, rgb.dtype)
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
    rgb8 = _convert_depth(rgb, np.uint8)
    img = Image.fromarray(_luma(rgb8), mode="L") if gray else Image.fromarray(rgb8, mode="RGB")
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
    rgb8 = _convert_depth(rgb, np.uint8)
    if alpha is not None:
        img = Image.fromarray(np.dstack([rgb8, _convert_depth(alpha, np.uint8)]), mode="RGBA")
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
        data = _riff_replace(data, b"EXIF", prefix + exif)
    return data


def _riff_replace(data: bytes, ctype: bytes, body: bytes) -> bytes:
    out = bytearray()
    for c, b in _riff_chunks(data):
        b = body if c == ctype else b
        out += c + struct.pack("<I", len(b)) + b + (b"\x00" if len(b) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(out) + 4) + b"WEBP" + bytes(out)


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


# ----------------------------------------------------------------------------------------------- storage

EXTENSIONS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".mpo": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF",
}  # fmt: skip


def format_for_url(url: str) -> str | None:
    """Output format implied by a URL's extension (None when it implies none we write)."""
    ext = os.path.splitext(url.split("?", 1)[0])[1].lower()
    return EXTENSIONS.get(ext)


def read_photo(url: str, *, max_pixels: int | None = None, **storage_options) -> Photo:
    """Read (read-only) and decode a photo from any fsspec URL. Raises PhotoError subclasses."""
    try:
        data = storage.read_bytes(url, **storage_options)
    except FileNotFoundError as exc:
        raise StorageError(url, "no such file or object") from exc
    except (OSError, ValueError) as exc:
        raise StorageError(url, f"cannot be read ({exc})") from exc
    return decode_photo(data, url, max_pixels=max_pixels)


def write_photo(
    photo: Photo,
    url: str,
    *,
    format: str | None = None,
    quality: int = 95,
    subsampling: str = "4:4:4",
    heif_preset: str = HEIF_PRESET,
    heif_chroma: str | None = None,
    **storage_options,
) -> None:
    """Encode fully in memory, then write atomically (local: temp file + os.replace; object store: one put).

    format: explicit output format; default: the URL's extension when it names one we write, else the
    source format. Refuses to write over the photo's own source URL (originals are never written).
    """
    if photo.name and _same_location(photo.name, url):
        raise StorageError(url, "refusing to overwrite the source photo")
    fmt = format or format_for_url(url) or None
    data = encode_photo(
        photo, format=fmt, quality=quality, subsampling=subsampling, heif_preset=heif_preset, heif_chroma=heif_chroma
    )
    try:
        storage.write_bytes_atomic(url, data, **storage_options)
    except (OSError, ValueError) as exc:
        raise StorageError(url, f"cannot be written ({exc})") from exc


def _same_location(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u[len("file://") :] if u.startswith("file://") else u
        return os.path.abspath(u) if "://" not in u else u.rstrip("/")

    return norm(a) == norm(b)
