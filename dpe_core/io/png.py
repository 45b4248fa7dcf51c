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


def xmp_from_chunk(chunk: Chunk) -> bytes | None:
    """Text of an iTXt chunk: keyword NUL flag method language NUL translated-keyword NUL text."""
    parts = chunk.data.split(b"\x00", 1)
    if len(parts) < 2 or len(parts[1]) < 2:
        return None
    flag, rest = parts[1][:1], parts[1][2:]
    fields = rest.split(b"\x00", 2)  # language, translated keyword, text
    if len(fields) < 3:
        return None
    text = fields[2]
    if flag == b"\x01":
        try:
            text = zlib.decompress(text)
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
