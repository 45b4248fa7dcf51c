"""A typed summary of a photo's EXIF, read with exifread (independent of our own EXIF patching code).

Unreadable or absent EXIF never raises: the record's ``warning`` says what went wrong.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import exifread
from pydantic import BaseModel, ConfigDict

from dpe_core.io.exif import EXIF_PREFIX

if TYPE_CHECKING:
    from dpe_core.io.photo import Photo

logging.getLogger("exifread").setLevel(logging.ERROR)


class ExifSummary(BaseModel):
    """The handful of EXIF facts people search and sort by. Units: seconds, mm, metres, decimal degrees."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    make: str | None = None
    model: str | None = None
    lens: str | None = None
    datetime_original: datetime | None = None
    exposure_time: float | None = None  # seconds
    f_number: float | None = None
    iso: int | None = None
    focal_length: float | None = None  # mm
    gps_latitude: float | None = None  # signed decimal degrees, north positive
    gps_longitude: float | None = None  # signed decimal degrees, east positive
    gps_altitude: float | None = None  # metres, negative below sea level
    orientation: int | None = None  # the source's EXIF Orientation (1..8) as it was before any turn
    warning: str | None = None


def _first(tag) -> Any:
    values = getattr(tag, "values", None)
    if isinstance(values, (list, tuple)):
        return values[0] if values else None
    return values


def _num(tag) -> float | None:
    if tag is None:
        return None
    v = _first(tag)
    try:
        return float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _text(tag) -> str | None:
    if tag is None:
        return None
    text = str(tag.printable if hasattr(tag, "printable") else tag).strip().strip("\x00").strip()
    return text or None


def _dms(tag, ref) -> float | None:
    if tag is None:
        return None
    values = getattr(tag, "values", None) or []
    try:
        parts = [float(v) for v in values[:3]]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    while len(parts) < 3:
        parts.append(0.0)
    value = parts[0] + parts[1] / 60 + parts[2] / 3600
    if _text(ref) in ("S", "W"):
        value = -value
    return round(value, 7)


def _when(tag) -> datetime | None:
    text = _text(tag)
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M"):
        try:
            return datetime.strptime(text[:19], fmt)
        except ValueError:
            continue
    return None


def summarize_tags(tags: dict, orientation: int | None = None) -> ExifSummary:
    g = tags.get
    iso = g("EXIF ISOSpeedRatings") or g("EXIF PhotographicSensitivity")
    alt = _num(g("GPS GPSAltitude"))
    if alt is not None and _first(g("GPS GPSAltitudeRef")) == 1:
        alt = -alt
    orient = orientation
    if orient is None:
        raw = _first(g("Image Orientation"))
        orient = raw if isinstance(raw, int) and 1 <= raw <= 8 else None
    iso_value = _first(iso) if iso is not None else None
    return ExifSummary(
        make=_text(g("Image Make")),
        model=_text(g("Image Model")),
        lens=_text(g("EXIF LensModel")) or _text(g("EXIF LensSpecification")),
        datetime_original=_when(g("EXIF DateTimeOriginal")) or _when(g("Image DateTime")),
        exposure_time=_num(g("EXIF ExposureTime")),
        f_number=_num(g("EXIF FNumber")),
        iso=int(iso_value) if isinstance(iso_value, int) else None,
        focal_length=_num(g("EXIF FocalLength")),
        gps_latitude=_dms(g("GPS GPSLatitude"), g("GPS GPSLatitudeRef")),
        gps_longitude=_dms(g("GPS GPSLongitude"), g("GPS GPSLongitudeRef")),
        gps_altitude=round(alt, 3) if alt is not None else None,
        orientation=orient,
    )


def read_exif_summary(source: Photo | bytes | None) -> ExifSummary:
    """Summary from a Photo, a raw EXIF block (with or without ``Exif\\0\\0``) or a whole image file's bytes."""
    orientation = None
    if source is not None and not isinstance(source, (bytes, bytearray, memoryview)):
        orientation = getattr(source, "orientation_applied", None)
        data = source.exif
        if not data:
            return ExifSummary(orientation=orientation if orientation and orientation != 1 else None)
    else:
        data = bytes(source) if source is not None else b""
    if not data:
        return ExifSummary(warning="no EXIF")
    if data.startswith(EXIF_PREFIX):
        data = data[len(EXIF_PREFIX) :]
    try:
        tags = exifread.process_file(io.BytesIO(data), details=False, extract_thumbnail=False)
    except Exception as exc:  # exifread raises many types on damaged input; a summary must never crash
        return ExifSummary(orientation=orientation, warning=f"EXIF unreadable: {type(exc).__name__}: {exc}")
    if not tags:
        return ExifSummary(orientation=orientation, warning="EXIF unreadable or empty")
    try:
        return summarize_tags(tags, orientation if orientation and orientation != 1 else None)
    except Exception as exc:  # a damaged value: keep what we can say
        return ExifSummary(orientation=orientation, warning=f"EXIF values unreadable: {type(exc).__name__}: {exc}")
