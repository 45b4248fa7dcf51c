"""Photo and storage IO (fsspec-based): decode/encode photos keeping every byte of metadata.

Public API: read_photo, write_photo, encode_photo, decode_photo, Photo, ExifSummary, read_exif_summary, IoLimits
and the PhotoError family. Policy per format: dpe_core/io/photo.py's docstring and docs/photo-io.md. Modules:
photo (the Photo), decode, encode, orientation, readwrite (URLs), limits, storage, redact, and the container
modules jpeg, png, tiff, webp, exif, xmp.
"""

from dpe_core.io.decode import decode_photo
from dpe_core.io.encode import encode_photo
from dpe_core.io.errors import (
    CorruptPhotoError,
    DecompressionBombError,
    InputTooLargeError,
    MetadataBombError,
    MetadataError,
    PhotoError,
    StorageError,
    TruncatedPhotoError,
    UnsupportedPhotoError,
)
from dpe_core.io.limits import DEFAULT_LIMITS, DEFAULT_MAX_PIXELS, IoLimits
from dpe_core.io.photo import Photo
from dpe_core.io.readwrite import format_for_url, read_photo, write_photo
from dpe_core.io.summary import ExifSummary, read_exif_summary

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_PIXELS",
    "CorruptPhotoError",
    "DecompressionBombError",
    "ExifSummary",
    "InputTooLargeError",
    "IoLimits",
    "MetadataBombError",
    "MetadataError",
    "Photo",
    "PhotoError",
    "StorageError",
    "TruncatedPhotoError",
    "UnsupportedPhotoError",
    "decode_photo",
    "encode_photo",
    "format_for_url",
    "read_exif_summary",
    "read_photo",
    "write_photo",
]
