"""Training data: photos from any fsspec URL, resized and symmetric-padded to a square, with valid masks.

Release protocol: resize the long side to the training size (aspect kept, never squashed), pad bottom/right
symmetrically to size x size, and compute losses only on the valid (unpadded) region. Augmentation: the 8
dihedral transforms, applied identically to both images of a pair. Sampling is a pure function of
(seed, step), so a resumed run draws exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dpe_core.io import read_photo
from dpe_core.io.storage import join_url, list_files
from dpe_core.nn.layers import symmetric_pad
from dpe_core.quality.degradations import random_degradation

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif", ".mpo")


def list_images(url: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, **storage_options) -> list[str]:
    """Sorted full URLs of the photos under a folder URL (recursively), by extension."""
    return [join_url(url, rel) for rel in list_files(url, "**", extensions=extensions, **storage_options)]


def load_rgb(url: str, long_side: int | None = None, **storage_options) -> torch.Tensor:
    """Decode a photo with dpe_core.io (orientation applied once) -> [3,H,W] float32 in [0,1].

    The long side is reduced to long_side (antialiased) when larger; photos are never upsampled.
    """
    photo = read_photo(url, **storage_options)
    scale = 65535.0 if photo.pixels.dtype == np.uint16 else 255.0
    image = torch.from_numpy(photo.pixels.astype(np.float32) / scale).permute(2, 0, 1).contiguous()
    if long_side is not None and max(image.shape[1:]) > long_side:
        image = resize_long_side(image, long_side).clamp(0, 1)
    return image


def pad_to_square(image: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[3,h,w] with max(h,w) <= size -> ([3,size,size] symmetric-padded bottom/right, valid mask [1,size,size])."""
    _, h, w = image.shape
    if h > size or w > size:
        raise ValueError(f"image {h}x{w} larger than training size {size}")
    mask = torch.zeros(1, size, size, dtype=image.dtype)
    mask[:, :h, :w] = 1
    return symmetric_pad(image, (0, size - w, 0, size - h)), mask


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 dihedral transforms of [...,H,W]: k in 0..7 = rot90^(k%4), then transpose if k >= 4."""
    out = torch.rot90(image, k % 4, dims=(-2, -1))
    return out.transpose(-2, -1) if k >= 4 else out


@dataclass
class Batch:
    """A training batch. x/y [B,3,S,S] in [0,1]; masks [B,1,S,S] in {0,1}; y is the target or reference photo."""

    x: torch.Tensor
    x_mask: torch.Tensor
    y: torch.Tensor
    y_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.x, self.x_mask, self.y, self.y_mask)))


def _step_rng(seed: int, step: int, stream: int) -> random.Random:
    return random.Random(hash((seed, step, stream)) & 0xFFFFFFFFFFFF)


def _fit_pair(a: torch.Tensor, b: torch.Tensor, size: int, k: int) -> tuple[torch.Tensor, ...]:
    a, b = dihedral(a, k), dihedral(b, k)
    (pa, ma), (pb, mb) = pad_to_square(a, size), pad_to_square(b, size)
    return pa, ma, pb, mb


class PhotoSet:
    """Photos decoded once at the training size and kept in memory ([3,h,w] tensors, long side = size)."""

    def __init__(self, urls: Sequence[str], size: int, **storage_options):
        if not urls:
            raise ValueError("no training photos: the source list is empty")
        self.urls = list(urls)
        self.size = size
        self.images = [load_rgb(u, size, **storage_options) for u in self.urls]

    def __len__(self) -> int:
        return len(self.images)


class UnpairedData:
    """Two-way GAN data: X photos (to enhance) and Y photos (the reference style); batches pair them at random."""

    def __init__(self, source: PhotoSet, reference: PhotoSet, augment: bool = True):
        self.source, self.reference, self.augment = source, reference, augment

    def batch(self, seed: int, step: int, batch_size: int) -> Batch:
        rng = _step_rng(seed, step, 0)
        size = self.source.size
        items = []
        for _ in range(batch_size):
            a = self.source.images[rng.randrange(len(self.source))]
            b = self.reference.images[rng.randrange(len(self.reference))]
            ka = rng.randrange(8) if self.augment else 0
            kb = rng.randrange(8) if self.augment else 0
            pa, ma = pad_to_square(dihedral(a, ka), size)
            pb, mb = pad_to_square(dihedral(b, kb), size)
            items.append((pa, ma, pb, mb))
        return Batch(*(torch.stack(t) for t in zip(*items, strict=True)))


class PairedData:
    """Paired data (input, expert target) with the same augmentation applied to both images of a pair."""

    def __init__(self, inputs: PhotoSet, targets: PhotoSet, augment: bool = True):
        if len(inputs) != len(targets):
            raise ValueError(f"paired data needs as many inputs ({len(inputs)}) as targets ({len(targets)})")
        for a, b, ua, ub in zip(inputs.images, targets.images, inputs.urls, targets.urls, strict=True):
            if a.shape != b.shape:
                raise ValueError(
                    f"pair {ua} / {ub}: sizes differ after resizing ({tuple(a.shape)} vs {tuple(b.shape)})"
                )
        self.inputs, self.targets, self.augment = inputs, targets, augment

    def __len__(self) -> int:
        return len(self.inputs)

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs.images[index], self.targets.images[index]

    def batch(self, seed: int, step: int, batch_size: int) -> Batch:
        rng = _step_rng(seed, step, 1)
        items = []
        for _ in range(batch_size):
            i = rng.randrange(len(self))
            a, b = self.pair(i)
            items.append(_fit_pair(a, b, self.inputs.size, rng.randrange(8) if self.augment else 0))
        return Batch(*(torch.stack(t) for t in zip(*items, strict=True)))


class DegradedPairData:
    """Synthetic pairs from real photos: input = random global degradation of the photo, target = the photo.

    Fresh degradation parameters every draw (seeded by (seed, step)) so the model cannot memorise them.
    clean_share of the draws are undamaged (input = target). target_jitter > 0 first moves each draw's photo by a
    mild family-A draw of that strength (the target varies between draws of one photo). With crop_scale low < 1,
    each draw takes a random crop covering low..1 of the cached photo's sides (aspect kept within 3:4..4:3 of the
    photo's own) and resizes it to the training size, except whole_share of the draws, which use the whole photo:
    crops at several scales multiply what a few dozen photos can teach, whole photos are what inference sees.
    """

    def __init__(self, photos: PhotoSet, augment: bool = True, strength: float = 1.0, clean_share: float = 0.0,
                 crop_scale: tuple[float, float] = (1.0, 1.0), whole_share: float = 1.0, train_size: int | None = None,
                 target_jitter: float = 0.0):
        self.photos, self.augment, self.strength, self.target_jitter = photos, augment, strength, target_jitter
        self.clean_share, self.crop_scale, self.whole_share = clean_share, crop_scale, whole_share
        self.size = train_size or photos.size
        self.wholes = [resize_long_side(img, self.size).clamp(0, 1) if max(img.shape[1:]) > self.size else img
                       for img in photos.images]

    def __len__(self) -> int:
        return len(self.photos)

    def _sample(self, rng: random.Random) -> torch.Tensor:
        index = rng.randrange(len(self.photos))
        low, high = self.crop_scale
        if low >= 1.0 or rng.random() < self.whole_share:
            return self.wholes[index]
        image = self.photos.images[index]
        _, h, w = image.shape
        area = rng.uniform(low, high) ** 2
        aspect = 2.0 ** rng.uniform(-0.415, 0.415)  # 3:4 .. 4:3
        ch = max(8, min(h, round(h * (area / aspect) ** 0.5)))
        cw = max(8, min(w, round(w * (area * aspect) ** 0.5)))
        top, left = rng.randrange(h - ch + 1), rng.randrange(w - cw + 1)
        crop = image[:, top : top + ch, left : left + cw]
        return resize_long_side(crop, self.size).clamp(0, 1) if max(ch, cw) > self.size else crop

    def batch(self, seed: int, step: int, batch_size: int) -> Batch:
        rng = _step_rng(seed, step, 2)
        items = []
        for _ in range(batch_size):
            target = self._sample(rng)
            if self.target_jitter > 0:
                # A mild family-A draw moves the photo itself, within what good photos vary by: the net cannot
                # learn "this photo looks like that" from a few dozen photos and must read the correction from
                # the input.
                target = random_degradation(rng, self.target_jitter).apply(target)
            degraded = random_degradation(rng, self.strength, self.clean_share).apply(target)
            items.append(_fit_pair(degraded, target, self.size, rng.randrange(8) if self.augment else 0))
        return Batch(*(torch.stack(t) for t in zip(*items, strict=True)))

    def fixed_pairs(self, degradations: Sequence[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic evaluation pairs of whole photos: photo i degraded by degradations[i % len]
        (anything with ``apply([3,H,W]) -> [3,H,W]``)."""
        return [(degradations[i % len(degradations)].apply(img), img) for i, img in enumerate(self.wholes)]


def resize_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """[...,3,h,w] -> resized (antialiased bilinear) so max(h,w) == long_side."""
    h, w = image.shape[-2:]
    scale = long_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    squeeze = image.ndim == 3
    out = F.interpolate(
        image[None] if squeeze else image, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out[0] if squeeze else out
