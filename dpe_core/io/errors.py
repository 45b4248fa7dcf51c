"""One typed exception family for photo IO.

Every error names the file (URL or name) and says what is wrong, so a per-file record can store
``str(error)`` as its reason. All derive from :class:`PhotoError`, itself a ``ValueError``.
"""

from __future__ import annotations


class PhotoError(ValueError):
    """Base class: a photo could not be read, decoded, encoded or written."""

    reason = "photo error"

    def __init__(self, name: str, detail: str):
        self.name = name
        self.detail = detail
        super().__init__(f"{name}: {self.reason}: {detail}")


class TruncatedPhotoError(PhotoError):
    """The file ends before the image data does (or is empty)."""

    reason = "truncated photo"


class CorruptPhotoError(PhotoError):
    """The image data is damaged (bad signature, bad checksum, invalid codestream)."""

    reason = "corrupt photo"


class UnsupportedPhotoError(PhotoError):
    """Not a photo format we decode/encode (or a mode/bit depth we do not handle)."""

    reason = "unsupported photo"


class DecompressionBombError(PhotoError):
    """The declared pixel count exceeds the configured limit (``max_pixels``)."""

    reason = "too many pixels"


class MetadataError(PhotoError):
    """Metadata cannot be carried to the output as the policy requires (e.g. EXIF too large for JPEG)."""

    reason = "metadata error"


class StorageError(PhotoError):
    """The bytes could not be read from / written to storage."""

    reason = "storage error"
