"""Orientation policy: turn the pixels once, then make every tag agree (IFD0/IFD1 Orientation, XMP).

JPEG, MPO, PNG, WebP, TIFF store pixels as the sensor saw them: the EXIF (else XMP) orientation is applied once
and the tags set to 1. HEIF pixels come upright from libheif (irot/imir are mandatory): only the tags are reset
(``orientation_source="container"``). Never twice, never a tag that disagrees with the pixels.
"""

from __future__ import annotations

import struct

from dpe_core.io import exif as exiflib
from dpe_core.io import xmp as xmplib


def orient(rgb, alpha, exif, xmp, orientation_source: str, name: str):
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
