"""One typed exception family for photo IO.

Every error names the file (URL or name) and says what is wrong, so a per-file record can store
``str(error)`` as its reason. All derive from :class:`PhotoError`, itself a ``ValueError``. The text never
holds credentials (URL passwords, known secret values are masked: ``dpe_core.io.redact``) and is never empty.
"""

from __future__ import annotations

from dpe_core.io.redact import redact


class PhotoError(ValueError):
    """Base class: a photo could not be read, decoded, encoded or written."""

    reason = "photo error"

    def __init__(self, name: str, detail: str):
        self.name = redact(str(name))
        self.detail = redact(str(detail).strip() or "no detail given")
        super().__init__(f"{self.name}: {self.reason}: {self.detail}")

    def __reduce__(self):  # picklable (decoder processes send errors back): rebuilt from (name, detail)
        return type(self), (self.name, self.detail)


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


class MetadataBombError(DecompressionBombError):
    """A metadata block (EXIF, XMP, ICC, a PNG text chunk ...) is, or inflates to, more than the configured
    limit (``IoLimits.max_metadata_bytes`` / ``max_metadata_total_bytes``); refused before it is inflated."""

    reason = "metadata too large"


class InputTooLargeError(PhotoError):
    """The stored file is larger than the configured limit (``IoLimits.max_input_bytes``); refused unread."""

    reason = "file too large"


class MetadataError(PhotoError):
    """Metadata cannot be carried to the output as the policy requires (e.g. EXIF too large for JPEG)."""

    reason = "metadata error"


class StorageError(PhotoError):
    """The bytes could not be read from / written to storage."""

    reason = "storage error"
