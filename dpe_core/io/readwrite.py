"""read_photo / write_photo: any fsspec URL, sources opened read-only, outputs written atomically."""

from __future__ import annotations

import os

from dpe_core.io import storage
from dpe_core.io.decode import decode_photo
from dpe_core.io.encode import HEIF_PRESET, encode_photo
from dpe_core.io.errors import PhotoError, StorageError
from dpe_core.io.limits import IoLimits, resolve
from dpe_core.io.photo import Photo

EXTENSIONS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".mpo": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF",
}  # fmt: skip


def format_for_url(url: str) -> str | None:
    """Output format implied by a URL's extension (None when it implies none we write)."""
    ext = os.path.splitext(url.split("?", 1)[0])[1].lower()
    return EXTENSIONS.get(ext)


def read_photo(
    url: str,
    *,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    limits: IoLimits | None = None,
    **storage_options,
) -> Photo:
    """Read (read-only) and decode a photo from any fsspec URL. Raises PhotoError subclasses.

    The stored size is checked before any byte is read (``max_bytes``, default ``limits.max_input_bytes``),
    the pixel count from the header before any pixel is decoded (``max_pixels``); see ``dpe_core.io.limits``.
    """
    lim = resolve(limits, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        data = storage.read_bytes(url, max_bytes=lim.max_input_bytes, **storage_options)
    except PhotoError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(url, "no such file or object") from exc
    except (OSError, ValueError) as exc:
        raise StorageError(url, f"cannot be read ({type(exc).__name__}: {exc})") from exc
    return decode_photo(data, url, limits=lim)


def write_photo(
    photo: Photo,
    url: str,
    *,
    format: str | None = None,
    quality: int = 95,
    subsampling: str = "4:4:4",
    heif_preset: str = HEIF_PRESET,
    heif_chroma: str | None = None,
    **storage_options,
) -> None:
    """Encode fully in memory, then write atomically (local: temp file + os.replace; object store: one put).

    format: explicit output format; default: the URL's extension when it names one we write, else the
    source format. Refuses to write over the photo's own source URL (originals are never written).
    """
    if photo.name and _same_location(photo.name, url):
        raise StorageError(url, "refusing to overwrite the source photo")
    fmt = format or format_for_url(url) or None
    data = encode_photo(
        photo, format=fmt, quality=quality, subsampling=subsampling, heif_preset=heif_preset, heif_chroma=heif_chroma
    )
    try:
        storage.write_bytes_atomic(url, data, **storage_options)
    except (OSError, ValueError) as exc:
        raise StorageError(url, f"cannot be written ({exc})") from exc


def _same_location(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u[len("file://") :] if u.startswith("file://") else u
        return os.path.abspath(u) if "://" not in u else u.rstrip("/")

    return norm(a) == norm(b)
