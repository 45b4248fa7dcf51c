"""8-bit RGB pixels kept in Pillow's own 4-bytes-per-pixel layout (RGBX), so that decode and encode copy nothing.

Pillow stores an RGB image as 32-bit pixels. ``np.asarray(im)`` therefore repacks every pixel (and copies twice
through ``tobytes``), and ``Image.fromarray(rgb)`` allocates a new image and unpacks into it: at 24 MP about 0.1 s
and 0.07 s, a third of a plain decode + encode. Here an HxWx4 uint8 numpy buffer is handed to Pillow as the image
memory itself (``Image.frombuffer`` maps it): libjpeg-turbo decodes straight into it (JCS_EXT_RGBX) and the JPEG
encoder reads straight from it. The photo's pixels are the buffer's HxWx3 view ``buf[..., :3]`` (strides
(4W, 4, 1)): a normal numpy array for every reader; the 4th byte is padding.

Decoding into a mapped buffer uses Pillow's tile and mode attributes (checked: one 'jpeg' tile of mode RGB);
anything else, or a Pillow whose attributes differ, takes the ordinary path.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dpe_core.rgbx_view import recycled_empty, rgbx_base


def rgbx_buffer(height: int, width: int) -> np.ndarray:
    """A new HxWx4 uint8 buffer (uninitialised); its ``[..., :3]`` view is an RGB image Pillow can map."""
    return recycled_empty((height, width, 4))  # large ones reuse released buffers: no page zeroing per photo


def to_pil(rgb: np.ndarray) -> Image.Image:
    """An 8-bit RGB Pillow image of ``rgb`` (HxWx3 uint8): the RGBX buffer mapped without a copy when ``rgb`` is
    the view of one (mode "RGBX", which Pillow's JPEG and WebP encoders take as RGB), else ``Image.fromarray``."""
    base = rgbx_base(rgb)
    if base is None:
        return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    h, w = rgb.shape[:2]
    return Image.frombuffer("RGBX", (w, h), base, "raw", "RGBX", 0, 1)


def prepare_rgbx_decode(im: Image.Image) -> tuple[np.ndarray, object] | None:
    """Point an opened, not yet loaded 8-bit RGB JPEG at a new RGBX buffer; after ``im.load()`` the buffer holds
    the pixels (``buf[..., :3]``) when ``loaded_into(im, token)``. Returns (buffer, token), or None (nothing
    changed) when the image is not a single-tile RGB JPEG or this Pillow lacks what the mapping needs."""
    try:
        tiles = list(im.tile)
        if im.format != "JPEG" or im.mode != "RGB" or len(tiles) != 1:
            return None
        tile = tiles[0]
        args = tile.args
        if tile.codec_name != "jpeg" or not isinstance(args, tuple) or not args or args[0] != "RGB":
            return None
        w, h = im.size
        if tuple(tile.extents) != (0, 0, w, h):
            return None
        buf = rgbx_buffer(h, w)
        core = Image.frombuffer("RGBX", (w, h), buf, "raw", "RGBX", 0, 1).im
        im.tile = [tile._replace(args=("RGBX", *args[1:]))]
        im._mode = "RGBX"
        im.im = core
        return buf, core
    except (AttributeError, TypeError, ValueError):
        return None


def loaded_into(im: Image.Image, token: object) -> bool:
    """After ``im.load()``: whether Pillow decoded into the mapped buffer (it keeps an image core of the right mode
    and size; otherwise it allocated its own and the buffer is not the photo)."""
    try:
        return im.im is token and im.mode == "RGBX"
    except (AttributeError, TypeError, ValueError):
        return False


__all__ = ["loaded_into", "prepare_rgbx_decode", "rgbx_base", "rgbx_buffer", "to_pil"]
