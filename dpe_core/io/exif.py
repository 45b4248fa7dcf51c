"""Raw EXIF (TIFF-structured) helpers: read a few tags, patch values in place, swap the thumbnail.

We never re-serialise a camera's EXIF block: maker notes hold offsets that only stay valid when every byte
stays where it was. So the block is carried as raw bytes and the few values that must change (orientation,
pixel dimensions, thumbnail) are patched *in place*, keeping the block's length. Everything here is
defensive: corrupt EXIF (loops, huge counts, offsets past the end) yields ``ExifParseError`` for the caller
to turn into a warning; it never hangs or crashes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

EXIF_PREFIX = b"Exif\x00\x00"

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
SHORT, LONG, SSHORT, SLONG = 3, 4, 8, 9
INT_FORMATS = {SHORT: "H", LONG: "I", SSHORT: "h", SLONG: "i"}  # some writers store Orientation as SLONG

TAG_IMAGE_WIDTH = 0x0100
TAG_IMAGE_LENGTH = 0x0101
TAG_ORIENTATION = 0x0112
TAG_EXIF_IFD = 0x8769
TAG_GPS_IFD = 0x8825
TAG_INTEROP_IFD = 0xA005
TAG_PIXEL_X = 0xA002
TAG_PIXEL_Y = 0xA003
TAG_THUMB_OFFSET = 0x0201
TAG_THUMB_LENGTH = 0x0202

MAX_ENTRIES = 4096


class ExifParseError(ValueError):
    """The EXIF block is not a TIFF structure we can walk safely."""


@dataclass(frozen=True)
class Entry:
    tag: int
    type: int
    count: int
    entry_pos: int  # offset of the 12-byte entry inside the TIFF block
    value_pos: int  # offset of the value bytes (inline field or pointed-to data)
    size: int  # value size in bytes (0 for unknown types)


def strip_prefix(exif: bytes) -> tuple[bytes, bytes]:
    """(prefix, tiff) where prefix is ``Exif\\0\\0`` when present (WebP/PNG writers sometimes keep it)."""
    if exif.startswith(EXIF_PREFIX):
        return EXIF_PREFIX, exif[len(EXIF_PREFIX) :]
    return b"", exif


class TiffBlock:
    """A read-only view of a TIFF-structured block (EXIF or a whole TIFF file)."""

    def __init__(self, data: bytes):
        if len(data) < 8:
            raise ExifParseError("EXIF block shorter than a TIFF header")
        self.data = data
        order = data[:2]
        if order == b"II":
            self.endian = "<"
        elif order == b"MM":
            self.endian = ">"
        else:
            raise ExifParseError(f"bad TIFF byte-order mark {order!r}")
        if self.u16(2) != 42:
            raise ExifParseError("bad TIFF magic number")
        self.first_ifd = self.u32(4)

    def u16(self, pos: int) -> int:
        return struct.unpack_from(self.endian + "H", self.data, pos)[0]

    def u32(self, pos: int) -> int:
        return struct.unpack_from(self.endian + "I", self.data, pos)[0]

    def ifd(self, offset: int) -> tuple[list[Entry], int]:
        """Entries of the IFD at offset, and the offset of the next IFD (0 when none)."""
        data = self.data
        if offset <= 0 or offset + 2 > len(data):
            raise ExifParseError(f"IFD offset {offset} outside the block ({len(data)} bytes)")
        count = self.u16(offset)
        if count > MAX_ENTRIES or offset + 2 + 12 * count > len(data):
            raise ExifParseError(f"IFD at {offset} claims {count} entries")
        entries = []
        for i in range(count):
            pos = offset + 2 + 12 * i
            tag, typ, n = struct.unpack_from(self.endian + "HHI", data, pos)
            size = TYPE_SIZES.get(typ, 0) * n
            value_pos = pos + 8 if size <= 4 else self.u32(pos + 8)
            entries.append(Entry(tag, typ, n, pos, value_pos, size))
        nxt_pos = offset + 2 + 12 * count
        nxt = self.u32(nxt_pos) if nxt_pos + 4 <= len(data) else 0
        return entries, nxt

    def value(self, entry: Entry) -> bytes:
        if entry.size == 0 or entry.value_pos + entry.size > len(self.data):
            raise ExifParseError(f"tag 0x{entry.tag:04x} value outside the block")
        return self.data[entry.value_pos : entry.value_pos + entry.size]

    def int_value(self, entry: Entry) -> int | None:
        """First value of a SHORT/LONG entry (None for other types)."""
        if entry.count < 1 or entry.type not in INT_FORMATS:
            return None
        raw = self.value(entry)
        return struct.unpack_from(self.endian + INT_FORMATS[entry.type], raw, 0)[0]

    def ifds(self) -> dict[str, list[Entry]]:
        """The standard IFDs by name: IFD0, IFD1, ExifIFD, GPS, Interop (those present)."""
        out: dict[str, list[Entry]] = {}
        seen: set[int] = set()

        def load(name: str, offset: int) -> list[Entry] | None:
            if offset in seen:
                raise ExifParseError(f"IFD loop at offset {offset}")
            seen.add(offset)
            entries, nxt = self.ifd(offset)
            out[name] = entries
            return nxt

        nxt = load("IFD0", self.first_ifd)
        if nxt:
            try:
                load("IFD1", nxt)
            except ExifParseError:
                pass  # a broken IFD1 link is common; the main IFD is what matters
        for parent, tag, name in (("IFD0", TAG_EXIF_IFD, "ExifIFD"), ("IFD0", TAG_GPS_IFD, "GPS")):
            entry = _find(out.get(parent, []), tag)
            if entry is not None and entry.type in (LONG, 13):
                try:
                    load(name, self.u32(entry.value_pos))
                except (ExifParseError, struct.error):
                    pass
        entry = _find(out.get("ExifIFD", []), TAG_INTEROP_IFD)
        if entry is not None and entry.type in (LONG, 13):
            try:
                load("Interop", self.u32(entry.value_pos))
            except (ExifParseError, struct.error):
                pass
        return out


def _find(entries: list[Entry], tag: int) -> Entry | None:
    for e in entries:
        if e.tag == tag:
            return e
    return None


def read_orientation(exif: bytes | None) -> int | None:
    """IFD0 Orientation (1..8) or None when absent/invalid/unreadable."""
    if not exif:
        return None
    try:
        block = TiffBlock(strip_prefix(exif)[1])
        entries, _ = block.ifd(block.first_ifd)
        entry = _find(entries, TAG_ORIENTATION)
        value = block.int_value(entry) if entry is not None else None
    except (ExifParseError, struct.error):
        return None
    return value if value in range(1, 9) else None


def thumbnail_span(exif: bytes) -> tuple[int, int] | None:
    """(start, length) of the IFD1 JPEG thumbnail inside the TIFF block (prefix excluded), if valid."""
    try:
        block = TiffBlock(strip_prefix(exif)[1])
        ifd1 = block.ifds().get("IFD1", [])
    except (ExifParseError, struct.error):
        return None
    off, length = _find(ifd1, TAG_THUMB_OFFSET), _find(ifd1, TAG_THUMB_LENGTH)
    if off is None or length is None:
        return None
    start, n = block.int_value(off), block.int_value(length)
    if start is None or not n or start + n > len(block.data):
        return None
    return start, n


def patch_exif(
    exif: bytes,
    *,
    orientation: int | None = None,
    pixel_size: tuple[int, int] | None = None,
    thumbnail: bytes | None = None,
    thumbnail_size: tuple[int, int] | None = None,
) -> bytes:
    """Return exif with values patched in place (same length, every other byte untouched).

    orientation: new IFD0/IFD1 Orientation (only where the tag exists). pixel_size: (width, height)
    for ExifIFD PixelXDimension/PixelYDimension and IFD0 ImageWidth/ImageLength where present.
    thumbnail: new JPEG bytes for the IFD1 thumbnail; must fit in the old one's space (the rest is zeroed).
    thumbnail_size: (width, height) for IFD1 ImageWidth/ImageLength where present.
    Raises ExifParseError when the block cannot be walked.
    """
    prefix, tiff = strip_prefix(exif)
    block = TiffBlock(tiff)
    ifds = block.ifds()
    out = bytearray(tiff)

    def put(entry: Entry | None, value: int) -> None:
        if entry is None or entry.count < 1 or entry.type not in INT_FORMATS:
            return
        if entry.type in (SHORT, SSHORT) and not 0 <= value < 32768:
            return
        if entry.value_pos + entry.size > len(out):
            raise ExifParseError(f"tag 0x{entry.tag:04x} value outside the block")
        struct.pack_into(block.endian + INT_FORMATS[entry.type], out, entry.value_pos, value)

    if orientation is not None:
        put(_find(ifds.get("IFD0", []), TAG_ORIENTATION), orientation)
        put(_find(ifds.get("IFD1", []), TAG_ORIENTATION), orientation)
    if pixel_size is not None:
        width, height = pixel_size
        put(_find(ifds.get("ExifIFD", []), TAG_PIXEL_X), width)
        put(_find(ifds.get("ExifIFD", []), TAG_PIXEL_Y), height)
        put(_find(ifds.get("IFD0", []), TAG_IMAGE_WIDTH), width)
        put(_find(ifds.get("IFD0", []), TAG_IMAGE_LENGTH), height)
    if thumbnail is not None:
        ifd1 = ifds.get("IFD1", [])
        off, length = _find(ifd1, TAG_THUMB_OFFSET), _find(ifd1, TAG_THUMB_LENGTH)
        start = block.int_value(off) if off is not None else None
        old = block.int_value(length) if length is not None else None
        if start is None or old is None or start + old > len(out) or len(thumbnail) > old:
            raise ExifParseError("no room for the new thumbnail")
        out[start : start + old] = thumbnail + bytes(old - len(thumbnail))
        put(length, len(thumbnail))
        if thumbnail_size is not None:
            put(_find(ifd1, TAG_IMAGE_WIDTH), thumbnail_size[0])
            put(_find(ifd1, TAG_IMAGE_LENGTH), thumbnail_size[1])
    return prefix + bytes(out)


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels (H x W [x C]) as displayed for an EXIF orientation (1..8), like PIL's exif_transpose."""
    a = array
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, k=-1)
    elif orientation == 7:
        a = a.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        a = np.rot90(a, k=1)
    return np.ascontiguousarray(a)


def swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)
