"""The Photo (pixels + every byte of metadata) and the per-format policy that decode and encode follow.

The same text, with the measured numbers and the must-change tag list, is in docs/photo-io.md. The code:
``decode.py`` (bytes -> Photo), ``orientation.py`` (turn once), ``encode.py`` (Photo -> bytes), ``readwrite.py``
(read_photo / write_photo on any fsspec URL), ``limits.py`` (what an input may cost), the container modules
``jpeg.py``, ``png.py``, ``tiff.py``, ``webp.py``, ``exif.py``, ``xmp.py``.

What a Photo is
    ``pixels``: HxWx3 RGB, uint8 or uint16 (16-bit sources stay 16-bit), upright: the orientation was
    applied exactly once at decode. ``alpha`` (HxW, same dtype) is never enhanced; it is reattached on
    write. ``exif`` is the raw TIFF-structured EXIF block (no ``Exif\\0\\0`` prefix) with IFD0/IFD1
    Orientation already set to 1 when the pixels were turned; ``icc_profile``, ``xmp``, ``iptc`` are raw
    bytes. Everything else the container held (JPEG APPn/COM segments, PNG ancillary chunks, TIFF tags, HEIF
    metadata items) rides along in ``carry`` and is written back verbatim when the output has the source's
    format.

Orientation (never twice, never a tag that disagrees with the pixels)
    * JPEG, MPO, PNG, WebP, TIFF: the stored pixels are as the sensor saw them; we read IFD0 Orientation
      (XMP tiff:Orientation only when EXIF has none), turn the pixels once, and set the tag(s) to 1: IFD0 and
      IFD1 Orientation in the raw EXIF (patched in place) and tiff:Orientation in XMP.
    * HEIF/HEIC: the container's transforms (irot/imir) are mandatory and libheif applies them while
      decoding (iPhones store Orientation 6 in EXIF *and* an irot box); we never turn again. The EXIF/XMP
      tags are set to 1 like above, so output and tags agree; ``orientation_applied`` reports the value the
      EXIF tag had.

Per format: what is enhanced / carried / written (default output format = source format)
    * JPEG (baseline, progressive): RGB enhanced. Every APPn/COM segment is carried in source order (JFIF,
      EXIF incl. maker notes and GPS, XMP and extended XMP, ICC, Photoshop/IPTC, vendor segments), MPF is
      dropped (the appended frames/previews are not carried). Written as JPEG quality 95, 4:4:4, progressive
      when the source was.
    * JPEG grayscale: enhanced as RGB (gray replicated), written back as grayscale (ITU-R 601 luma); its
      gray ICC profile stays valid and is carried.
    * JPEG CMYK/YCCK: converted to sRGB through its embedded ICC profile (plain inversion when there is
      none), enhanced, written as an RGB (YCbCr) JPEG carrying an sRGB profile; the CMYK profile cannot
      describe RGB pixels and is not carried; the Adobe segment's transform flag becomes YCbCr.
    * MPO (stereo/multi-frame JPEG): the first frame is enhanced and written as a JPEG (other frames and
      the MPF index are not carried).
    * PNG 8/16-bit gray/RGB(A): enhanced at the source bit depth, written at the same depth and colour type;
      every ancillary chunk (tEXt/zTXt/iTXt, eXIf, iCCP, gAMA, cHRM, sRGB, pHYs, tIME ...) is carried,
      before or after the image data as in the source. Palette PNGs (and tRNS colour keys) are decoded to
      RGB + alpha and written as truecolour (+alpha): re-quantising enhanced colours to a palette would
      damage them. Interlaced sources are written non-interlaced.
    * TIFF 8/16-bit gray/RGB(A), CMYK (as JPEG CMYK): descriptive tags, EXIF/GPS sub-IFDs, ICC, XMP, IPTC
      carried; structural tags rewritten; one Deflate strip (lossless). Associated alpha is unpremultiplied
      for the enhancer and written as unassociated alpha.
    * WebP (lossy/lossless, alpha): EXIF, ICC, XMP chunks carried; lossless sources stay lossless, lossy
      ones are written at ``quality``.
    * HEIF/HEIC (8-bit, 10/12-bit as 16-bit, alpha, monochrome): EXIF, XMP, ICC (or the nclx colour
      description), IPTC and other metadata items carried; thumbnails regenerated at the source's sizes;
      depth maps and HDR gain maps (auxiliary images describing the *old* pixels) are not carried. Written
      with x265 at ``quality`` (preset ``ultrafast``: see docs/photo-io.md for the measured trade-off).
    * Anything else (GIF, ICO, BMP, camera raw such as CR2/DNG) raises UnsupportedPhotoError.

What must change on write (everything else is byte-identical)
    * pixel dimensions (EXIF PixelX/YDimension, IFD0 ImageWidth/Length, XMP dimension properties) - only
      when the written size differs from the stored size of the source (rotation or resize);
    * Orientation (IFD0, IFD1, XMP) - set to 1 when the pixels were turned;
    * the EXIF thumbnail (IFD1) - regenerated from the written pixels, inside its old space so no other
      byte moves, when the pixels changed (``with_pixels``) or were turned; kept as-is otherwise;
    * the encoding itself (quality, subsampling, Huffman tables, compression, container boxes).

Limits (``limits.py``, env variables, docs/photo-io.md)
    Every check runs before the costly step: the stored size (``max_input_bytes``, default 1 GiB) before a byte
    is read, the pixel count (``max_pixels``, default 100 MP) from the header before a pixel is decoded, each
    metadata block (``max_metadata_bytes``, default 16 MiB, inflated size for compressed PNG chunks measured
    while inflating in bounded pieces) and all of a file's blocks (``max_metadata_total_bytes``, 64 MiB) before
    they are inflated or carried. Errors: InputTooLargeError, DecompressionBombError, MetadataBombError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dpe_core.rgbx_view import rgbx_base

if TYPE_CHECKING:
    from dpe_core.io.summary import ExifSummary


@dataclass(frozen=True)
class Carry:
    """Container metadata carried verbatim when the output has the source's format.

    blocks: JPEG ``jpeg.Segment`` list (EXIF/XMP/ICC/IPTC segments stand as placeholders), PNG ``png.Chunk``
    list (same), TIFF ``tiff.Tag`` list (non-structural tags not in Photo.exif), HEIF metadata items.
    info: format facts (progressive, lossless, exif prefix, thumbnail sizes, ICC chunk name ...).
    """

    format: str
    blocks: tuple = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Photo:
    """Upright pixels plus every byte of the source's metadata (see the module docstring for each field)."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    source_format: str = "JPEG"
    source_mode: str = "RGB"
    bit_depth: int = 8
    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None
    orientation_applied: int = 1
    name: str = ""
    carry: Carry | None = None
    stored_size: tuple[int, int] | None = None  # (width, height) as stored in the source, before orientation
    pixels_changed: bool = False  # set by with_pixels: stale thumbnails are regenerated on write
    warnings: tuple[str, ...] = ()

    def __post_init__(self):
        _check_pixels(self.pixels, self.name)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the RGBX buffer behind RGB-view pixels (contiguous: protocol 5 sends it out of band, no
        copy; a strided view would be copied in band and arrive without its 4-byte layout)."""
        state = dict(self.__dict__)
        base = rgbx_base(self.pixels)
        if base is not None:
            state["pixels"], state["_rgbx"] = base, True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state.pop("_rgbx", False):
            state["pixels"] = state["pixels"][..., :3]
        _check_pixels(state["pixels"], state.get("name", ""))
        self.__dict__.update(state)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def with_pixels(self, new_pixels: np.ndarray) -> Photo:
        """Same metadata, new pixels (HxWx3 uint8/uint16, any size). Alpha is resized to match if needed."""
        _check_pixels(new_pixels, self.name)
        alpha = self.alpha
        if alpha is not None and alpha.shape != new_pixels.shape[:2]:
            alpha = resize_plane(alpha, new_pixels.shape[1], new_pixels.shape[0])
        if alpha is not None and alpha.dtype != new_pixels.dtype:
            alpha = convert_depth(alpha, new_pixels.dtype)
        return dataclasses.replace(
            self,
            pixels=new_pixels,
            alpha=alpha,
            pixels_changed=True,
            bit_depth=16 if new_pixels.dtype == np.uint16 else 8,
        )

    @property
    def metadata(self) -> ExifSummary:
        """The EXIF summary (make, model, date, exposure, GPS ...) read with exifread."""
        from dpe_core.io.summary import read_exif_summary

        return read_exif_summary(self)


def _check_pixels(pixels: np.ndarray, name: str) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{name}: pixels must be an HxWx3 array, got {getattr(pixels, 'shape', type(pixels))}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{name}: pixels must be uint8 or uint16, got {pixels.dtype}")


def convert_depth(a: np.ndarray, dtype) -> np.ndarray:
    """uint8 <-> uint16 samples (x257 up, rounded /257 down); unchanged when already ``dtype``."""
    if a.dtype == dtype:
        return a
    if dtype == np.uint16:
        return a.astype(np.uint16) * 257
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """One HxW uint8/uint16 plane (alpha) resized bilinearly to width x height, same dtype."""
    if plane.dtype == np.uint16:
        img = Image.fromarray(plane.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
        return np.clip(np.rint(np.asarray(img)), 0, 65535).astype(np.uint16)
    return np.asarray(Image.fromarray(plane, mode="L").resize((width, height), Image.Resampling.BILINEAR))
