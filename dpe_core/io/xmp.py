"""Minimal, byte-preserving XMP edits: read/patch tiff:Orientation and pixel-dimension properties.

Only the digits of the properties that must change are replaced; the rest of the packet is untouched.
"""

from __future__ import annotations

import re

_ORIENT = re.compile(rb'(tiff:Orientation\s*=\s*["\']|<tiff:Orientation>)\s*([1-8])')
_DIMS = {
    "width": re.compile(
        rb'((?:exif:PixelXDimension|tiff:ImageWidth)\s*=\s*["\']|<(?:exif:PixelXDimension|tiff:ImageWidth)>)(\d+)'
    ),
    "height": re.compile(
        rb'((?:exif:PixelYDimension|tiff:ImageLength)\s*=\s*["\']|<(?:exif:PixelYDimension|tiff:ImageLength)>)(\d+)'
    ),
}


def read_orientation(xmp: bytes | None) -> int | None:
    if not xmp:
        return None
    match = _ORIENT.search(xmp)
    return int(match.group(2)) if match else None


def patch(xmp: bytes, *, orientation: int | None = None, pixel_size: tuple[int, int] | None = None) -> bytes:
    """XMP with tiff:Orientation and/or the dimension properties replaced where they exist."""
    out = xmp
    if orientation is not None:
        out = _ORIENT.sub(lambda m: m.group(1) + str(orientation).encode(), out)
    if pixel_size is not None:
        for key, value in (("width", pixel_size[0]), ("height", pixel_size[1])):
            out = _DIMS[key].sub(lambda m, v=value: m.group(1) + str(v).encode(), out)
    return out
