"""Hostile photo files built in memory with zlib and Pillow: PNGs whose compressed metadata chunks inflate to
hundreds of MB, oversized EXIF, sparse huge files. Shared by tests/core/test_io_limits.py and
tests/reliability/test_hostile_inputs.py."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MB = 1 << 20
XMP_KEY = b"XML:com.adobe.xmp"


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def deflate_repeated(n_bytes: int, head: bytes = b"", byte: bytes = b" ") -> bytes:
    """zlib stream of ``head`` + n_bytes of ``byte`` (~1000:1), built in 1 MB pieces."""
    comp = zlib.compressobj(9)
    out = [comp.compress(head)]
    block = byte * MB
    for _ in range(n_bytes // MB):
        out.append(comp.compress(block))
    out.append(comp.flush())
    return b"".join(out)


def png_with(chunks: list[bytes], after_idat: list[bytes] = (), size=(8, 6)) -> bytes:
    """A real RGB PNG (Pillow) with extra raw chunks spliced before / after its IDAT."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    idat = data.index(b"IDAT") - 4
    iend = data.index(b"IEND") - 4
    return data[:idat] + b"".join(chunks) + data[idat:iend] + b"".join(after_idat) + data[iend:]


def itxt_chunk(key: bytes, text: bytes, compressed: bool, method: int = 0) -> bytes:
    return chunk(b"iTXt", key + b"\x00" + bytes([1 if compressed else 0, method]) + b"\x00\x00" + text)


def ztxt_chunk(key: bytes, stream: bytes) -> bytes:
    return chunk(b"zTXt", key + b"\x00\x00" + stream)


def iccp_chunk(stream: bytes) -> bytes:
    return chunk(b"iCCP", b"ICC Profile\x00\x00" + stream)


@functools.lru_cache(maxsize=2)  # built once per process: deflating 1 GB takes seconds
def xmp_bomb(inflated: int = 1024 * MB) -> bytes:
    """A ~1 MB PNG whose compressed iTXt XMP packet inflates to ``inflated`` bytes."""
    return png_with([itxt_chunk(XMP_KEY, deflate_repeated(inflated, b"<x:xmpmeta>"), True)])


@functools.lru_cache(maxsize=2)  # built once per process: deflating 1 GB takes seconds
def exif_text_bomb(inflated: int = 200 * MB) -> bytes:
    """A PNG whose zTXt 'Raw profile type exif' (after the image data) inflates to ``inflated`` bytes."""
    return png_with([], [ztxt_chunk(b"Raw profile type exif", deflate_repeated(inflated, b"exif"))])


@functools.lru_cache(maxsize=2)  # built once per process: deflating 1 GB takes seconds
def icc_bomb(inflated: int = 200 * MB) -> bytes:
    """A PNG whose iCCP profile inflates to ``inflated`` bytes."""
    return png_with([iccp_chunk(deflate_repeated(inflated, b"\x00\x00\x02\x00"))])


@functools.lru_cache(maxsize=2)  # built once per process: deflating 1 GB takes seconds
def big_exif_png(size: int = 20 * MB) -> bytes:
    """A PNG with a stored (uncompressed) eXIf chunk of ``size`` bytes."""
    return png_with([chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00" + bytes(size - 10))])


def sparse_file(path: Path, size: int = 64 << 30, head: bytes = b"\xff\xd8\xff\xe0") -> Path:
    """A sparse file of ``size`` bytes (no disk used) starting with ``head``."""
    with open(path, "wb") as handle:
        handle.write(head)
    os.truncate(path, size)
    return path
