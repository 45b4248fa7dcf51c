"""WebP (RIFF) chunk surgery: list the chunks of a file, replace one chunk's body."""

from __future__ import annotations

import struct


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(fourcc, body) of each chunk of a RIFF/WebP file, in order (a chunk cut short gives a short body)."""
    out, pos = [], 12
    while pos + 8 <= len(data):
        ctype, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        out.append((ctype, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def riff_replace(data: bytes, ctype: bytes, body: bytes) -> bytes:
    """The RIFF/WebP file with the body of every ``ctype`` chunk replaced (sizes and padding rewritten)."""
    out = bytearray()
    for c, b in riff_chunks(data):
        b = body if c == ctype else b
        out += c + struct.pack("<I", len(b)) + b + (b"\x00" if len(b) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(out) + 4) + b"WEBP" + bytes(out)
