"""TIFF metadata split/merge and a small baseline TIFF writer (8/16-bit, gray/RGB(A), none or Deflate).

A TIFF keeps its metadata as tags of the image's own IFD. On read we split IFD0 into the *structural* tags
(how the pixels are stored: written anew on output) and the *descriptive* tags (make, model, dates,
resolution, copyright, EXIF/GPS sub-IFDs ...), which become a standalone EXIF block in ``Photo.exif`` with the
source's byte order. ICC (34675), XMP (700) and IPTC (33723) go to their own Photo fields. On write the
descriptive tags, sub-IFDs and those three are merged back with fresh structural tags. Sub-IFDs are
re-laid out, so offsets *inside* a maker note of a TIFF (rare outside raw files) are not kept valid.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from dpe_core.io.exif import TAG_EXIF_IFD, TAG_GPS_IFD, TAG_INTEROP_IFD, TYPE_SIZES, ExifParseError, TiffBlock

TAG_XMP, TAG_IPTC, TAG_ICC = 700, 33723, 34675
STRUCTURAL = {
    256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341,
    347, 512, 513, 514, 515, 517, 518, 519, 520, 521, 530, 532,
}  # fmt: skip
POINTERS = {TAG_EXIF_IFD: "ExifIFD", TAG_GPS_IFD: "GPS", TAG_INTEROP_IFD: "Interop"}
RAW_MARKERS = {0xC612: "DNG"}  # DNGVersion: a raw file, not a developed photo


@dataclass(frozen=True)
class Tag:
    tag: int
    type: int
    count: int
    value: bytes  # raw value bytes in the block's byte order
    sub: tuple[Tag, ...] | None = None  # entries of the sub-IFD this pointer tag points to


def read_ifd_tags(block: TiffBlock, offset: int, depth: int = 0, seen: set[int] | None = None) -> list[Tag]:
    seen = set() if seen is None else seen
    if offset in seen or depth > 3:
        raise ExifParseError("IFD loop")
    seen.add(offset)
    entries, _ = block.ifd(offset)
    tags = []
    for e in entries:
        if e.size == 0 or e.value_pos + e.size > len(block.data):
            continue  # unknown type or value outside the file: not carried
        value = block.value(e)
        sub = None
        if e.tag in POINTERS and e.count == 1 and e.type in (4, 13):
            try:
                sub = tuple(read_ifd_tags(block, block.u32(e.value_pos), depth + 1, seen))
            except (ExifParseError, struct.error):
                continue
        tags.append(Tag(e.tag, e.type, e.count, value, sub))
    return tags


def split_tiff(data: bytes) -> tuple[str, list[Tag], dict[int, Tag]]:
    """(byte order '<'/'>', descriptive IFD0 tags incl. sub-IFDs, {ICC/XMP/IPTC tag: Tag})."""
    block = TiffBlock(data)
    tags = read_ifd_tags(block, block.first_ifd)
    special = {t.tag: t for t in tags if t.tag in (TAG_ICC, TAG_XMP, TAG_IPTC)}
    descriptive = [t for t in tags if t.tag not in STRUCTURAL and t.tag not in special]
    return block.endian, descriptive, special


def is_raw(data: bytes) -> str | None:
    """Name of the camera-raw flavour when a TIFF-based file is raw sensor data (CR2, DNG ...)."""
    if data[8:10] == b"CR":
        return "Canon CR2"
    try:
        block = TiffBlock(data)
        entries, _ = block.ifd(block.first_ifd)
    except (ExifParseError, struct.error):
        return None
    for e in entries:
        if e.tag in RAW_MARKERS:
            return RAW_MARKERS[e.tag]
    return None


def exif_tags(exif: bytes) -> tuple[str, list[Tag]]:
    block = TiffBlock(exif)
    return block.endian, read_ifd_tags(block, block.first_ifd)


def _layout(endian: str, tags: list[Tag], start: int, out: bytearray, fixups: list) -> None:
    """Append the IFD at ``start`` (== len(out)) followed by its values and sub-IFDs."""
    tags = sorted(tags, key=lambda t: t.tag)
    ifd_size = 2 + 12 * len(tags) + 4
    out += bytes(ifd_size)
    struct.pack_into(endian + "H", out, start, len(tags))
    for i, t in enumerate(tags):
        pos = start + 2 + 12 * i
        struct.pack_into(endian + "HHI", out, pos, t.tag, t.type, t.count)
        if t.sub is not None:
            fixups.append((pos + 8, t.sub))
            continue
        if callable(t.value):
            fixups.append((pos + 8, t.value))
            continue
        if len(t.value) <= 4:
            out[pos + 8 : pos + 8 + len(t.value)] = t.value
        else:
            if len(out) % 2:
                out += b"\x00"
            struct.pack_into(endian + "I", out, pos + 8, len(out))
            out += t.value
    if len(out) % 2:
        out += b"\x00"


def serialise(endian: str, tags: list[Tag], image: bytes | None = None) -> bytes:
    """A TIFF block: header, IFD0 (+ values), sub-IFDs, then ``image`` (the strip) if given.

    A Tag whose value is a callable receives the strip's offset (used for StripOffsets).
    """
    out = bytearray((b"II" if endian == "<" else b"MM") + struct.pack(endian + "HI", 42, 8))
    fixups: list = []
    _layout(endian, tags, 8, out, fixups)
    while fixups:
        pos, target = fixups.pop(0)
        if callable(target):
            if len(out) % 2:
                out += b"\x00"
            struct.pack_into(endian + "I", out, pos, len(out))
            out += image or b""
            continue
        if len(out) % 2:
            out += b"\x00"
        struct.pack_into(endian + "I", out, pos, len(out))
        _layout(endian, list(target), len(out), out, fixups)
    return bytes(out)


def _short(endian: str, tag: int, values: list[int]) -> Tag:
    return Tag(tag, 3, len(values), struct.pack(endian + "H" * len(values), *values))


def _long(endian: str, tag: int, value: int) -> Tag:
    return Tag(tag, 4, 1, struct.pack(endian + "I", value))


def encode_tiff(
    pixels: np.ndarray,
    *,
    endian: str = "<",
    descriptive: list[Tag] = (),
    extra: list[Tag] = (),
    alpha_associated: bool = False,
    compress: bool = True,
) -> bytes:
    """Baseline TIFF: HxW or HxWxC (C = 1..4) uint8/uint16, one strip, Deflate (or none)."""
    a = np.ascontiguousarray(pixels)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    depth = 16 if a.dtype == np.uint16 else 8
    raw = a.astype(endian + ("u2" if depth == 16 else "u1")).tobytes()
    strip = zlib.compress(raw, 6) if compress else raw
    photometric = 1 if c <= 2 else 2
    structural = [
        _long(endian, 256, w),
        _long(endian, 257, h),
        _short(endian, 258, [depth] * c),
        _short(endian, 259, [8 if compress else 1]),
        _short(endian, 262, [photometric]),
        Tag(273, 4, 1, lambda: None),
        _short(endian, 277, [c]),
        _long(endian, 278, h),
        _long(endian, 279, len(strip)),
        _short(endian, 284, [1]),
    ]
    if c in (2, 4):
        structural.append(_short(endian, 338, [1 if alpha_associated else 2]))
    tags = structural + [t for t in descriptive if t.tag not in STRUCTURAL] + list(extra)
    seen: dict[int, Tag] = {}
    for t in tags:
        seen.setdefault(t.tag, t)
    return serialise(endian, list(seen.values()), strip)


def type_size(tag: Tag) -> int:
    return TYPE_SIZES.get(tag.type, 1) * tag.count
