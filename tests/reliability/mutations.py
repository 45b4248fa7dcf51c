"""Seeded, structure-aware mutations of real photo files for the fuzz tests (tests/reliability/test_fuzz.py).

``mutate(data, fmt, rng)`` returns (mutated bytes, what was done). Generic edits (bit flips, truncations, byte
runs, insertions/deletions) apply to every format; structure-aware ones know each container:

* JPEG: segment length lies (0, 1, 2, 0xFFFF, +-k), marker swaps, SOF fields (size, precision, components,
  sampling), DQT/DHT/SOS table bytes, dropped/duplicated segments, junk and restart markers in the scan data;
* PNG: chunk length lies (CRC left stale), CRC-valid corrupted chunks (IHDR fields, PLTE/tRNS sizes, iCCP/zTXt
  garbage), dropped/duplicated/reordered chunks, IDAT re-compressed after editing the filtered rows (invalid
  filter types, wrong row count);
* HEIF (ISO BMFF): box size lies (0, 1, tiny, huge, +-k) at any depth, box type edits, edits of ispe sizes,
  iloc offsets/lengths, pitm, irot and hvcC bytes, truncation at box boundaries.

Everything is deterministic for a given ``random.Random`` seed, so a failing case is reproduced from its seed.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

INTERESTING_16 = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]
INTERESTING_32 = [0, 1, 2, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x10000, 0xFFFF]


# ----------------------------------------------------------------------------------------------- generic


def bit_flips(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    n = rng.choice([1, 1, 2, 3, 5, 8, 16])
    header = rng.random() < 0.6  # most parsing happens in the first few KB
    span = min(len(out), 4096) if header else len(out)
    for _ in range(n):
        pos = rng.randrange(span)
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out), f"{n} bit flips in the {'header' if header else 'file'}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.choice([rng.randrange(1, max(2, len(data))), rng.randrange(1, min(len(data), 512)),
                      len(data) - rng.randrange(1, min(len(data), 64))])
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def byte_run(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    pos = rng.randrange(len(out))
    n = rng.randint(1, 16)
    fill = rng.choice([b"\x00", b"\xff", None])
    for i in range(pos, min(len(out), pos + n)):
        out[i] = fill[0] if fill else rng.randrange(256)
    return bytes(out), f"{n} bytes overwritten at {pos}"


def insert_delete(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    pos = rng.randrange(len(data))
    n = rng.randint(1, 32)
    if rng.random() < 0.5:
        return data[:pos] + bytes(rng.randrange(256) for _ in range(n)) + data[pos:], f"{n} bytes inserted at {pos}"
    return data[:pos] + data[pos + n :], f"{n} bytes deleted at {pos}"


GENERIC: list[Callable[[bytes, random.Random], tuple[bytes, str]]] = [bit_flips, truncate, byte_run, insert_delete]


# ----------------------------------------------------------------------------------------------- JPEG


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset of the 0xFF, marker, length field) of each marker segment up to and including SOS."""
    out, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        out.append((pos, marker, length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def _jpeg(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    segs = jpeg_segments(data)
    if not segs:
        return bit_flips(data, rng)
    out = bytearray(data)
    pos, marker, length = rng.choice(segs)
    kind = rng.choice(["length", "length", "marker", "sof", "tables", "drop", "dup", "scan", "sos"])
    if kind == "length":
        new = rng.choice([0, 1, 2, 0xFFFF, max(0, length + rng.randint(-8, 8)), rng.randrange(0x10000)])
        struct.pack_into(">H", out, pos + 2, new)
        return bytes(out), f"JPEG segment 0x{marker:02X} at {pos}: length {length} -> {new}"
    if kind == "marker":
        new = rng.choice([0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC9, 0xCB, 0xCF, 0xD8, 0xD9, 0xDA, 0xDB, 0xDD, 0xE1, 0xE2,
                          0xEE, 0xFE, 0x00, 0xFF])
        out[pos + 1] = new
        return bytes(out), f"JPEG marker 0x{marker:02X} at {pos} -> 0x{new:02X}"
    if kind == "sof":
        sof = [s for s in segs if s[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB)]
        if sof:
            pos, marker, length = sof[0]
            field = rng.choice(["precision", "height", "width", "components", "sampling", "qtable"])
            if field == "precision":
                out[pos + 4] = rng.choice([0, 1, 7, 12, 16, 255])
            elif field in ("height", "width"):
                struct.pack_into(">H", out, pos + (5 if field == "height" else 7), rng.choice(INTERESTING_16))
            elif field == "components":
                out[pos + 9] = rng.choice([0, 1, 2, 4, 5, 255])
            elif field == "sampling" and pos + 11 < len(out):
                out[pos + 11] = rng.choice([0x00, 0x11, 0x22, 0x44, 0x41, 0x14, 0xFF, 0x33])
            elif pos + 12 < len(out):
                out[pos + 12] = rng.choice([0, 1, 2, 3, 4, 255])
            return bytes(out), f"JPEG SOF 0x{marker:02X} {field} edited"
    if kind == "tables":
        tables = [s for s in segs if s[1] in (0xC4, 0xDB, 0xDD)]
        if tables:
            pos, marker, length = rng.choice(tables)
            for _ in range(rng.randint(1, 4)):
                at = pos + 4 + rng.randrange(max(1, length - 2))
                if at < len(out):
                    out[at] = rng.randrange(256)
            return bytes(out), f"JPEG table 0x{marker:02X} at {pos}: bytes edited"
    if kind == "sos":
        sos = [s for s in segs if s[1] == 0xDA]
        if sos:
            pos, _, length = sos[0]
            at = pos + 4 + rng.randrange(max(1, length - 2))
            if at < len(out):
                out[at] = rng.choice([0, 1, 3, 4, 0x11, 0x3F, 0xFF, rng.randrange(256)])
            return bytes(out), "JPEG SOS header byte edited"
    if kind == "drop":
        return bytes(out[:pos] + out[pos + 2 + length :]), f"JPEG segment 0x{marker:02X} at {pos} dropped"
    if kind == "dup":
        seg = bytes(out[pos : pos + 2 + length])
        return bytes(out[:pos]) + seg + bytes(out[pos:]), f"JPEG segment 0x{marker:02X} duplicated"
    # junk or restart markers inside the entropy-coded data
    start = segs[-1][0] + 2 + segs[-1][2] if segs[-1][1] == 0xDA else len(out) // 2
    if start < len(out) - 2:
        at = rng.randrange(start, len(out) - 2)
        junk = rng.choice([b"\xff\xd0", b"\xff\xd7", b"\xff\xd9", b"\xff\xc4\x00\x02", b"\xff\x00\xff", b"\x00" * 64])
        return bytes(out[:at]) + junk + bytes(out[at:]), f"JPEG scan data: {junk[:4].hex()} inserted at {at}"
    return bit_flips(data, rng)


# ----------------------------------------------------------------------------------------------- PNG


def png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk, as the length fields say (stops at the first impossible one)."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            break
        out.append((pos, ctype, length))
        pos += 12 + length
    return out


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _png(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    chunks = png_chunks(data)
    if not chunks:
        return bit_flips(data, rng)
    parts = [(t, data[p + 8 : p + 8 + n]) for p, t, n in chunks]
    tail = data[chunks[-1][0] + 12 + chunks[-1][2] :]
    kind = rng.choice(["length_lie", "length_lie", "ihdr", "ihdr", "body", "idat", "idat", "drop", "dup", "swap",
                       "ancillary"])
    if kind == "length_lie":
        i = rng.randrange(len(chunks))
        pos, ctype, length = chunks[i]
        new = rng.choice([0, 1, length + rng.randint(1, 64), max(0, length - rng.randint(1, 64)),
                          rng.choice(INTERESTING_32)])
        out = bytearray(data)
        struct.pack_into(">I", out, pos, new)
        return bytes(out), f"PNG {ctype.decode('latin-1')} length {length} -> {new} (CRC stale)"

    def rebuild(items) -> bytes:
        return data[:8] + b"".join(_chunk(t, b) for t, b in items) + tail

    if kind == "ihdr":
        t, body = parts[0]
        body = bytearray(body)
        field = rng.choice(["width", "height", "depth", "colour", "compression", "filter", "interlace"])
        if field in ("width", "height") and len(body) >= 8:
            struct.pack_into(">I", body, 0 if field == "width" else 4,
                             rng.choice([0, 1, 2, 3, 17, 1 << 15, 1 << 16, 0x7FFFFFFF, 0xFFFFFFFF]))
        elif len(body) >= 13:
            index = {"depth": 8, "colour": 9, "compression": 10, "filter": 11, "interlace": 12}[field]
            body[index] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255])
        parts[0] = (t, bytes(body))
        return rebuild(parts), f"PNG IHDR {field} edited (CRC valid)"
    if kind == "idat":
        idats = [i for i, (t, _) in enumerate(parts) if t == b"IDAT"]
        if idats:
            stream = b"".join(parts[i][1] for i in idats)
            try:
                raw = bytearray(zlib.decompress(stream))
            except zlib.error:
                raw = None
            if raw:
                what = rng.choice(["filter", "rows", "bytes", "shorter", "longer"])
                if what == "filter":
                    for _ in range(rng.randint(1, 4)):
                        raw[rng.randrange(len(raw))] = rng.choice([5, 6, 127, 255])
                elif what == "bytes":
                    for _ in range(rng.randint(1, 32)):
                        raw[rng.randrange(len(raw))] = rng.randrange(256)
                elif what == "shorter":
                    raw = raw[: rng.randrange(len(raw))]
                elif what == "longer":
                    raw += bytes(rng.randrange(1, 4096))
                else:
                    raw = raw + raw[: len(raw) // 3]
                body = zlib.compress(bytes(raw))
                items = [p for i, p in enumerate(parts) if i not in idats]
                items.insert(idats[0], (b"IDAT", body))
                return rebuild(items), f"PNG IDAT re-compressed after '{what}' edit of the rows (CRC valid)"
    if kind == "body":
        i = rng.randrange(len(parts))
        t, body = parts[i]
        if body:
            body = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            parts[i] = (t, bytes(body))
            return rebuild(parts), f"PNG {t.decode('latin-1')} bytes edited (CRC valid)"
    if kind == "drop" and len(parts) > 1:
        i = rng.randrange(len(parts))
        t = parts.pop(i)[0]
        return rebuild(parts), f"PNG {t.decode('latin-1')} dropped"
    if kind == "dup":
        i = rng.randrange(len(parts))
        parts.insert(i, parts[i])
        return rebuild(parts), f"PNG {parts[i][0].decode('latin-1')} duplicated"
    if kind == "swap" and len(parts) > 2:
        i = rng.randrange(len(parts) - 1)
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
        return rebuild(parts), f"PNG {parts[i][0].decode('latin-1')}/{parts[i + 1][0].decode('latin-1')} swapped"
    # an ancillary chunk with hostile content (CRC valid)
    ctype, body = rng.choice([
        (b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(bytes(rng.randrange(256) for _ in range(200)))),
        (b"iCCP", b"x\x00\x00garbage"),
        (b"zTXt", b"Comment\x00\x00\x78\x9cgarbage"),
        (b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + b"\x78\x9c\x01\x02"),
        (b"tEXt", b"\xff\xfe\x00\xff"),
        (b"eXIf", b"MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(20)),
        (b"tRNS", bytes(300)),
        (b"PLTE", bytes(rng.randrange(0, 800))),
        (b"sRGB", b"\x07\x07"),
        (b"gAMA", b""),
        (b"pHYs", b"\xff" * 9),
    ])
    parts.insert(1, (ctype, body))
    return rebuild(parts), f"PNG hostile {ctype.decode('latin-1')} chunk inserted (CRC valid)"


# ----------------------------------------------------------------------------------------------- HEIF

_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"dinf": 0, b"moov": 0, b"trak": 0, b"iinf": 6, b"iref": 4}


def heif_boxes(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[tuple[int, bytes, int]]:
    """(offset, type, size) of every box, descending into the containers HEIF uses (meta, iprp, ipco ...)."""
    end = len(data) if end is None else end
    out, pos = [], start
    while pos + 8 <= end and depth < 6:
        size, btype = struct.unpack_from(">I4s", data, pos)
        if size == 1 and pos + 16 <= end:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif size == 0:
            size = end - pos
        if size < 8 or pos + size > end:
            break
        out.append((pos, btype, size))
        skip = _CONTAINERS.get(btype)
        if skip is not None:
            extra = 0
            if btype == b"iinf":  # full box + entry count (16-bit for version 0)
                extra = 2 if data[pos + 8] == 0 else 4
                skip = 4 + extra
            out += heif_boxes(data, pos + 8 + skip, pos + size, depth + 1)
        pos += size
    return out


def _heif(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    boxes = heif_boxes(data)
    if not boxes:
        return bit_flips(data, rng)
    out = bytearray(data)
    kind = rng.choice(["size", "size", "type", "field", "field", "field", "cut"])
    if kind == "size":
        pos, btype, size = rng.choice(boxes)
        new = rng.choice([0, 1, 7, 8, size + rng.randint(1, 64), max(8, size - rng.randint(1, 64)), 0xFFFFFFFF])
        struct.pack_into(">I", out, pos, new)
        return bytes(out), f"HEIF box {btype!r} at {pos}: size {size} -> {new}"
    if kind == "type":
        pos, btype, _ = rng.choice(boxes)
        new = rng.choice([b"mdat", b"meta", b"free", b"ispe", b"iloc", b"\x00\x00\x00\x00", b"ftyp", b"hvcC"])
        out[pos + 4 : pos + 8] = new
        return bytes(out), f"HEIF box type {btype!r} at {pos} -> {new!r}"
    if kind == "cut":
        pos, btype, size = rng.choice(boxes)
        cut = pos + rng.randrange(0, size)
        return bytes(out[:cut]), f"HEIF cut inside box {btype!r} at {cut}"
    wanted = [b for b in boxes if b[1] in (b"ispe", b"iloc", b"pitm", b"irot", b"hvcC", b"infe", b"colr", b"pixi",
                                           b"ipma", b"iref", b"idat", b"ftyp")]
    pos, btype, size = rng.choice(wanted or boxes)
    body = pos + 8
    if btype == b"ispe" and size >= 20:
        struct.pack_into(">I", out, body + 4 + 4 * rng.randrange(2), rng.choice(INTERESTING_32 + [65536, 100000]))
    elif size > 8:
        for _ in range(rng.randint(1, 4)):
            at = body + rng.randrange(size - 8)
            out[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    return bytes(out), f"HEIF box {btype!r} at {pos}: content edited"


STRUCTURED = {"JPEG": _jpeg, "PNG": _png, "HEIF": _heif}


def mutate(data: bytes, fmt: str, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of ``data`` (a file of container ``fmt``): structure-aware 2 times in 3, else generic;
    sometimes two mutations stacked."""
    structured = STRUCTURED.get(fmt)
    if structured is not None and rng.random() < 0.67:
        out, what = structured(data, rng)
    else:
        out, what = rng.choice(GENERIC)(data, rng)
    if rng.random() < 0.15 and out:
        out, more = (structured or rng.choice(GENERIC))(out, rng)
        what += "; " + more
    return out, what
