"""JPEG marker-segment surgery: read the metadata segments of a source, splice them into a fresh encoding.

The pixels are encoded by Pillow (libjpeg); the metadata segments (APPn, COM) of the source are put back
verbatim in their source order, with placeholders for the blocks the Photo exposes (EXIF, XMP, ICC,
Photoshop/IPTC) so that their current values are written. Multi-picture (MPF) segments are dropped: the
frames/previews they index are appended after the main image and are not carried (see docs/photo-io.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
APP0, APP1, APP2, APP13, APP14 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE
STANDALONE = {0x01, *range(0xD0, 0xD8), SOI, EOI}
SOF_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}

EXIF_ID = b"Exif\x00\x00"
XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXT_ID = b"http://ns.adobe.com/xmp/extension/\x00"
ICC_ID = b"ICC_PROFILE\x00"
MPF_ID = b"MPF\x00"
PHOTOSHOP_ID = b"Photoshop 3.0\x00"
MAX_PAYLOAD = 65533  # segment length field counts itself: 65535 - 2


class JpegStructureError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    marker: int
    payload: bytes

    def kind(self) -> str:
        """exif / xmp / icc / iptc / mpf / adobe / other."""
        p = self.payload
        if self.marker == APP1 and p.startswith(EXIF_ID):
            return "exif"
        if self.marker == APP1 and p.startswith(XMP_ID):
            return "xmp"
        if self.marker == APP2 and p.startswith(ICC_ID):
            return "icc"
        if self.marker == APP2 and p.startswith(MPF_ID):
            return "mpf"
        if self.marker == APP13 and p.startswith(PHOTOSHOP_ID):
            return "iptc"
        if self.marker == APP14 and p.startswith(b"Adobe"):
            return "adobe"
        return "other"


@dataclass(frozen=True)
class JpegHeader:
    segments: tuple[Segment, ...]  # APPn and COM segments before the first SOS, in order
    sof_marker: int | None
    sos_pos: int  # offset of the first SOS marker (start of entropy-coded data)

    @property
    def progressive(self) -> bool:
        return self.sof_marker in PROGRESSIVE_SOF


def parse_header(data: bytes) -> JpegHeader:
    """Walk the marker segments up to the first SOS. Tolerates fill bytes and junk between segments."""
    if not data.startswith(b"\xff\xd8"):
        raise JpegStructureError("no JPEG start-of-image marker")
    pos, n = 2, len(data)
    segments: list[Segment] = []
    sof = None
    while pos < n:
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)  # junk between segments: skip to the next marker
            if nxt < 0:
                break
            pos = nxt
            continue
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker in STANDALONE:
            if marker == EOI:
                break
            continue
        if pos + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise JpegStructureError(f"segment 0x{marker:02X} runs past the end of the file")
        if marker == SOS:
            return JpegHeader(tuple(segments), sof, pos - 2)
        payload = data[pos + 2 : pos + length]
        if 0xE0 <= marker <= 0xEF or marker == COM:
            segments.append(Segment(marker, payload))
        elif marker in SOF_MARKERS and sof is None:
            sof = marker
        pos += length
    raise JpegStructureError("no start-of-scan marker (image data missing)")


def icc_segments(icc: bytes) -> list[Segment]:
    chunk = MAX_PAYLOAD - len(ICC_ID) - 2
    parts = [icc[i : i + chunk] for i in range(0, len(icc), chunk)] or [b""]
    if len(parts) > 255:
        raise ValueError("ICC profile too large for JPEG (more than 255 segments)")
    return [Segment(APP2, ICC_ID + bytes([i + 1, len(parts)]) + part) for i, part in enumerate(parts)]


def splice(encoded: bytes, segments: list[Segment]) -> bytes:
    """Replace the APPn/COM segments of a fresh encoding by ``segments`` (kept in the given order)."""
    header = parse_header(encoded)
    out = bytearray(b"\xff\xd8")
    for seg in segments:
        if len(seg.payload) > MAX_PAYLOAD:
            raise ValueError(f"APP{seg.marker - APP0} segment of {len(seg.payload)} bytes exceeds the JPEG limit")
        out += struct.pack(">BBH", 0xFF, seg.marker, len(seg.payload) + 2) + seg.payload
    # copy the encoder's own non-metadata segments (DQT, SOF, DHT, DRI ...) then the scan data
    pos = 2
    while pos < header.sos_pos:
        while encoded[pos] == 0xFF and encoded[pos + 1] == 0xFF:
            pos += 1
        marker = encoded[pos + 1]
        (length,) = struct.unpack_from(">H", encoded, pos + 2)
        if not (0xE0 <= marker <= 0xEF or marker == COM):
            out += encoded[pos : pos + 2 + length]
        pos += 2 + length
    out += encoded[header.sos_pos :]
    return bytes(out)


def patch_adobe_transform(payload: bytes, transform: int) -> bytes:
    """APP14 Adobe segment with its colour-transform byte set (0 none/gray, 1 YCbCr, 2 YCCK)."""
    if len(payload) >= 12 and payload[11] != transform:
        return payload[:11] + bytes([transform]) + payload[12:]
    return payload
