"""What one input may cost before it is refused: file size, pixels, metadata size (inflated).

One frozen ``IoLimits`` object holds the limits; the process default comes from environment variables read at
import (``DEFAULT_LIMITS``), a caller passes its own ``IoLimits`` (or ``max_pixels``/``max_bytes``) per call.
Every check runs *before* the expensive step: the file size before a byte is read, the pixel count from the
header before a pixel is decoded, a compressed metadata block's inflated size while inflating it in bounded
pieces (zlib ``max_length``), never after. Defaults and their reasons: docs/photo-io.md ("Limits").
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from dpe_core.io.errors import DecompressionBombError, InputTooLargeError, MetadataBombError

MiB = 1 << 20
GiB = 1 << 30
ENV = {
    "max_input_bytes": "DPE_MAX_INPUT_BYTES",
    "max_pixels": "DPE_MAX_PIXELS",
    "max_metadata_bytes": "DPE_MAX_METADATA_BYTES",
    "max_metadata_total_bytes": "DPE_MAX_METADATA_TOTAL_BYTES",
}
_PIECE = MiB  # inflate in pieces of this size when only the inflated size is needed


@dataclass(frozen=True)
class IoLimits:
    """Per-input limits. Sizes in bytes; metadata sizes are the *inflated* sizes of compressed blocks.

    max_input_bytes: the stored file (a 100 MP 16-bit RGBA TIFF, uncompressed, is 800 MB).
    max_pixels: width x height from the header (Pillow's and libheif's pixel decoders are not bounded).
    max_metadata_bytes: one metadata block: EXIF, XMP (with extended XMP), ICC profile, IPTC, one PNG text
        chunk or any other ancillary chunk/segment/item that is carried to the output.
    max_metadata_total_bytes: all of one file's metadata blocks together.
    """

    max_input_bytes: int = 1 * GiB
    max_pixels: int = 100_000_000
    max_metadata_bytes: int = 16 * MiB
    max_metadata_total_bytes: int = 64 * MiB

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"IoLimits.{f.name} must be a positive integer, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IoLimits:
        """Defaults overridden by DPE_MAX_INPUT_BYTES, DPE_MAX_PIXELS, DPE_MAX_METADATA_BYTES and
        DPE_MAX_METADATA_TOTAL_BYTES (integers; an invalid value raises ValueError naming the variable)."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, var in ENV.items():
            text = environ.get(var)
            if text is None or not text.strip():
                continue
            try:
                values[name] = int(text.strip().replace("_", ""))
            except ValueError:
                raise ValueError(f"environment variable {var}={text!r} is not an integer") from None
        return cls(**values)

    def replace(self, **changes) -> IoLimits:
        """A copy with some limits changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULT_LIMITS = IoLimits.from_env()
DEFAULT_MAX_PIXELS = DEFAULT_LIMITS.max_pixels


def resolve(limits: IoLimits | None = None, *, max_pixels: int | None = None, max_bytes: int | None = None) -> IoLimits:
    """The limits of one call: ``limits`` (default: DEFAULT_LIMITS) with explicit arguments applied on top."""
    base = DEFAULT_LIMITS if limits is None else limits
    if max_pixels is None and max_bytes is None:
        return base
    return base.replace(max_pixels=None if max_pixels is None else int(max_pixels),
                        max_input_bytes=None if max_bytes is None else int(max_bytes))


def human(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, for messages)."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def check_input_size(name: str, size: int | None, limit: int) -> None:
    """Refuse a stored file larger than ``limit`` bytes, naming its size (before any byte is read)."""
    if size is not None and size > limit:
        raise InputTooLargeError(
            name, f"{human(size)} ({size} bytes) exceeds the input limit of {human(limit)} ({limit} bytes; "
            f"max_input_bytes, env {ENV['max_input_bytes']}); not read",
        )


def check_pixels(name: str, width: int, height: int, limit: int) -> None:
    """Refuse a header size whose pixel count exceeds ``limit`` (before any pixel is decoded)."""
    if width * height > limit:
        raise DecompressionBombError(
            name,
            f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds the limit of {limit / 1e6:.1f} MP "
            f"(pass a larger max_pixels or set {ENV['max_pixels']} to process it)",
        )


class MetadataBudget:
    """Counts one file's metadata blocks against the per-block and per-file limits."""

    def __init__(self, name: str, limits: IoLimits):
        self.name = name
        self.limits = limits
        self.total = 0

    def _refuse(self, what: str, size_text: str, limit: int, setting: str, inflated: bool) -> None:
        tail = "; refused before inflating it" if inflated else ""
        raise MetadataBombError(
            self.name, f"{what} {size_text} the limit of {human(limit)} ({limit} bytes; {setting}, "
            f"env {ENV[setting]}){tail}",
        )

    def add(self, what: str, size: int) -> None:
        """Account one stored (not compressed) block of ``size`` bytes; ``what`` names it in the error."""
        if size > self.limits.max_metadata_bytes:
            self._refuse(what, f"is {human(size)} ({size} bytes), more than", self.limits.max_metadata_bytes,
                         "max_metadata_bytes", False)
        self.total += size
        if self.total > self.limits.max_metadata_total_bytes:
            self._refuse(f"{what}: the file's metadata blocks together", f"reach {human(self.total)}, more than",
                         self.limits.max_metadata_total_bytes, "max_metadata_total_bytes", False)

    def add_compressed(self, what: str, data: bytes) -> int:
        """Account a zlib-compressed block by its inflated size, inflating at most the remaining budget (in
        pieces, output discarded). Returns the inflated size; raises MetadataBombError past a limit.
        Damaged zlib data raises zlib.error (the caller decides whether that is corruption)."""
        per_block = self.limits.max_metadata_bytes
        room = self.limits.max_metadata_total_bytes - self.total
        size = inflated_size(data, min(per_block, room) + 1)
        if size > per_block:
            self._refuse(what, "inflates to more than", per_block, "max_metadata_bytes", True)
        if size > room:
            self._refuse(f"{what}: the file's metadata blocks together, inflated,", "reach more than",
                         self.limits.max_metadata_total_bytes, "max_metadata_total_bytes", True)
        self.total += size
        return size


def inflated_size(data: bytes, stop_at: int) -> int:
    """Size of zlib ``data`` once inflated, counting at most ``stop_at`` bytes (then returns >= stop_at).

    Inflates in pieces of 1 MiB with zlib's ``max_length`` and discards them: memory stays ~1 MiB and the work
    stays proportional to ``stop_at``, whatever the data claims.
    """
    d = zlib.decompressobj()
    total, pending = 0, data
    while pending and not d.eof:
        total += len(d.decompress(pending, _PIECE))
        if total >= stop_at:
            return total
        pending = d.unconsumed_tail
    if not d.eof:
        total += len(d.flush())  # at most one pending match (<= 258 bytes)
    return total


def inflate(data: bytes, limit: int, name: str, what: str) -> bytes:
    """zlib ``data`` inflated, refused with MetadataBombError (naming ``what``) once it passes ``limit``
    bytes: at most ``limit + 1`` bytes are ever produced. Damaged data raises zlib.error."""
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    if len(out) <= limit and not d.eof:
        out += d.flush()
    if len(out) > limit:
        raise MetadataBombError(
            name, f"{what} inflates to more than the limit of {human(limit)} ({limit} bytes; max_metadata_bytes, "
            f"env {ENV['max_metadata_bytes']}); refused before inflating it",
        )
    return out
