"""Photo and storage IO (fsspec-based): decode/encode photos keeping every byte of metadata.

Public API: read_photo, write_photo, encode_photo, decode_photo, Photo, ExifSummary, read_exif_summary and the
PhotoError family. Policy per format: dpe_core/io/photo.py's docstring and docs/photo-io.md.
"""

from dpe_core.io.errors import (
    CorruptPhotoError,
    DecompressionBombError,
    MetadataError,
    PhotoError,
    StorageError,
    TruncatedPhotoError,
    UnsupportedPhotoError,
)
from dpe_core.io.photo import (
    DEFAULT_MAX_PIXELS,
    Photo,
    decode_photo,
    encode_photo,
    format_for_url,
    read_photo,
    write_photo,
)
from dpe_core.io.summary import ExifSummary, read_exif_summary

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CorruptPhotoError",
    "DecompressionBombError",
    "ExifSummary",
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
