"""PNG chunk surgery and a small 8/16-bit PNG encoder.

Source ancillary chunks are carried verbatim (text, time, physical size, gamma/chromaticities, sRGB, cICP,
eXIf ...), keeping whether they stood before or after the image data. The chunks that describe the pixel
encoding (IHDR, PLTE, tRNS, IDAT, IEND) are written anew; chunks whose meaning depends on the colour type or
bit depth (bKGD, sBIT, hIST, sPLT) are dropped when those change.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from dpe_core.io.limits import inflate

SIGNATURE = b"\x89PNG\r\n\x1a\n"
STRUCTURAL = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
COLOUR_DEPENDENT = {b"bKGD", b"sBIT", b"hIST", b"sPLT"}
XMP_KEYWORD = b"XML:com.adobe.xmp"


class PngStructureError(ValueError):
    pass


@dataclass(frozen=True)
class Chunk:
    type: bytes
    data: bytes
    after_idat: bool = False

    def kind(self) -> str:
        if self.type == b"eXIf":
            return "exif"
        if self.type == b"iCCP":
            return "icc"
        if self.type == b"iTXt" and self.data.split(b"\x00", 1)[0] == XMP_KEYWORD:
            return "xmp"
        return "other"


def parse_chunks(data: bytes) -> tuple[bytes, list[Chunk]]:
    """(IHDR payload, every chunk in order). Raises PngStructureError on a broken chunk list."""
    if not data.startswith(SIGNATURE):
        raise PngStructureError("bad PNG signature")
    pos, chunks, seen_idat, ihdr = len(SIGNATURE), [], False, None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if not ctype.isalpha() or length > 0x7FFFFFFF:  # PNG: four ASCII letters, length < 2^31
            raise PngStructureError(f"invalid chunk {ctype!r} (length {length}) at offset {pos}")
        end = pos + 12 + length
        if end > len(data):
            raise PngStructureError(f"chunk {ctype!r} runs past the end of the file")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if crc != zlib.crc32(ctype + body) & 0xFFFFFFFF:
            raise PngStructureError(f"chunk {ctype!r} fails its CRC check")
        if ctype == b"IHDR":
            ihdr = body
        if ctype == b"IDAT":
            seen_idat = True
        chunks.append(Chunk(ctype, body, after_idat=seen_idat and ctype != b"IDAT"))
        pos = end
        if ctype == b"IEND":
            break
    if ihdr is None or len(ihdr) != 13:
        raise PngStructureError("missing IHDR")
    if not any(c.type == b"IEND" for c in chunks):
        raise PngStructureError("file runs past the end: no IEND chunk")
    return ihdr, chunks


def chunk_bytes(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def xmp_chunk(xmp: bytes) -> Chunk:
    return Chunk(b"iTXt", XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + xmp)


def _itxt_fields(data: bytes) -> tuple[int, int, bytes] | None:
    """(compression flag, method, text) of an iTXt body: keyword NUL flag method language NUL translated NUL text."""
    parts = data.split(b"\x00", 1)
    if len(parts) < 2 or len(parts[1]) < 2:
        return None
    flag, method, rest = parts[1][0], parts[1][1], parts[1][2:]
    fields = rest.split(b"\x00", 2)  # language, translated keyword, text
    if len(fields) < 3:
        return None
    return flag, method, fields[2]


def compressed_text(chunk: Chunk) -> bytes | None:
    """The zlib stream of a compressed zTXt, iTXt or iCCP chunk (compression method 0, the only one PNG
    defines), else None: the bytes whose inflated size must be checked before anything inflates them."""
    if chunk.type not in (b"zTXt", b"iTXt", b"iCCP"):
        return None
    if chunk.type == b"iTXt":
        fields = _itxt_fields(chunk.data)
        return fields[2] if fields is not None and fields[0] == 1 and fields[1] == 0 else None
    keyword, sep, rest = chunk.data.partition(b"\x00")
    if not sep or not rest or rest[0] != 0:
        return None
    return rest[1:]


def describe(chunk: Chunk) -> str:
    """'PNG iTXt chunk 'XML:com.adobe.xmp' (XMP)' - for messages."""
    ctype = chunk.type.decode("latin-1")
    text = f"PNG {ctype} chunk"
    if chunk.type in (b"tEXt", b"zTXt", b"iTXt", b"iCCP"):
        keyword = chunk.data.split(b"\x00", 1)[0][:79].decode("latin-1")
        text += f" {keyword!r}"
    kind = {"exif": "EXIF", "icc": "ICC profile", "xmp": "XMP"}.get(chunk.kind())
    return f"{text} ({kind})" if kind else text


def xmp_from_chunk(chunk: Chunk, max_size: int, name: str = "") -> bytes | None:
    """XMP packet of an iTXt chunk (inflated when compressed, refused with MetadataBombError past ``max_size``
    bytes, never inflating more); None when the chunk is malformed or uses an unknown compression method."""
    fields = _itxt_fields(chunk.data)
    if fields is None:
        return None
    flag, method, text = fields
    if flag == 1:
        if method != 0:
            return None  # carried verbatim as an unknown chunk
        try:
            text = inflate(text, max_size, name, describe(chunk))
        except zlib.error:
            return None
    return text


def icc_chunk(icc: bytes, name: bytes = b"ICC Profile") -> Chunk:
    return Chunk(b"iCCP", name[:79] + b"\x00\x00" + zlib.compress(icc))


def icc_name(chunk: Chunk) -> bytes:
    return chunk.data.split(b"\x00", 1)[0]


def rebuild(ihdr_and_idat: bytes, chunks: list[Chunk], drop_colour_dependent: bool) -> bytes:
    """A PNG from a fresh encoding's IHDR/PLTE/tRNS/IDAT and the carried ``chunks``."""
    _, fresh = parse_chunks(ihdr_and_idat)
    out = bytearray(SIGNATURE)
    head = [c for c in fresh if c.type in (b"IHDR",)]
    core = [c for c in fresh if c.type in (b"PLTE", b"tRNS", b"IDAT")]
    before = [c for c in chunks if not c.after_idat]
    after = [c for c in chunks if c.after_idat]
    if drop_colour_dependent:
        before = [c for c in before if c.type not in COLOUR_DEPENDENT]
        after = [c for c in after if c.type not in COLOUR_DEPENDENT]
    for c in head + before + core + after:
        out += chunk_bytes(c.type, c.data)
    out += chunk_bytes(b"IEND", b"")
    return bytes(out)


def encode_png(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """Minimal PNG (IHDR + IDAT) for HxW (gray) or HxWxC (C=2,3,4) uint8/uint16 arrays.

    Every row uses the 'Up' filter (vectorised); compression is zlib at ``compress_level``.
    """
    a = np.ascontiguousarray(pixels)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    depth = 16 if a.dtype == np.uint16 else 8
    raw = a.astype(">u2").view(np.uint8) if depth == 16 else a.view(np.uint8)
    rows = raw.reshape(h, w * c * (depth // 8))
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps modulo 256 as the filter requires
    filtered = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]
    filtered[1:, 1:] = up[1:]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(filtered.tobytes(), compress_level)
    return SIGNATURE + chunk_bytes(b"IHDR", ihdr) + chunk_bytes(b"IDAT", idat) + chunk_bytes(b"IEND", b"")
