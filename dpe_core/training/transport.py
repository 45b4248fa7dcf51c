"""Colour transport between two photo sets: a no-training, unpaired prior for the two-way GAN.

Two kinds, both estimated from the pixels of both sets pooled (every pixel up to 4 M a set, an even subset
beyond), both invertible:
- ``quantile``: per channel, the monotone map that sends the quantiles of the source pixels to those of the
  reference pixels (piecewise linear between quantiles): the pooled histogram transfer of
  ``dpe_core.quality.style.pooled_histogram_transfer``. Expresses per-channel curves (tone, white balance).
- ``affine``: the linear Monge-Kantorovich map between the Gaussians of the two pixel clouds, x -> A (x - m_s) + m_r
  with A symmetric, A C_s A = C_r (Pitie & Kokaram 2007). Expresses cross-channel changes (saturation, a colour
  matrix) that per-channel curves cannot, but no curve.

``TrainConfig.transport_weight`` gives the generators T(x) (and G_Y T^-1(y)) as a target in every batch. The sets
are read as sets: no photo is ever paired with another, so a model trained with it has still never seen a pair.

Why: on 18 + 18 photos the critics learn a look from a few dozen per-image colour statistics, a noisy estimate
that left the two-way GAN 2.2 dB behind the paired model on warm-contrast (docs/style.md), while a map estimated
from every pixel of both sets scores above the paired model on the same test photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from dpe_core.nn.layers import interp1d

TransportKind = Literal["quantile", "affine"]


# A set gives at most this many pixels (each photo evenly strided by one common step) to the pooled estimate:
# thousands of 512-px photos would otherwise be copied whole in float64 (gigabytes). The bound is on the set, not
# the photo: a per-photo cap of 16 k moved the affine map enough to cost 1.8 dB on the style benchmark's 256-px
# photos (measured), while every set the benchmark and the bundled looks use stays under this one (every pixel).
MAX_POOLED_PIXELS = 4_000_000


def _pooled_pixels(images: Sequence[torch.Tensor], max_pixels: int = MAX_POOLED_PIXELS) -> np.ndarray:
    """[N, 3] float64: the pixels of [3,h,w] images pooled; when they number more than ``max_pixels``, every
    k-th pixel of each photo with one k for the set (about ``max_pixels`` in all)."""
    total = sum(img[0].numel() for img in images)
    stride = max(1, -(-total // max_pixels))
    return np.concatenate([img.detach().reshape(3, -1)[:, ::stride].T.double().cpu().numpy() for img in images])


class QuantileColourTransport:
    """Per-channel quantile map from a source photo set to a reference photo set, and back.

    ``source`` / ``reference``: [levels, 3] quantiles in [0,1] (non-decreasing per column).
    """

    def __init__(self, source: torch.Tensor, reference: torch.Tensor):
        if source.shape != reference.shape or source.ndim != 2 or source.shape[1] != 3:
            raise ValueError(f"quantile tables must both be [levels, 3], got {tuple(source.shape)} and "
                             f"{tuple(reference.shape)}")
        self.source, self.reference = source.float(), reference.float()

    @classmethod
    def fit(cls, sources: Sequence[torch.Tensor], references: Sequence[torch.Tensor], levels: int = 257,
            max_pixels: int = MAX_POOLED_PIXELS) -> QuantileColourTransport:
        """From two sets of [3,h,w] photos in [0,1] (any sizes; up to ``max_pixels`` pixels of each set)."""
        _require(sources, references)
        q = np.linspace(0.0, 1.0, levels)

        def table(images: Sequence[torch.Tensor]) -> torch.Tensor:
            return torch.from_numpy(np.quantile(_pooled_pixels(images, max_pixels), q, axis=0).astype(np.float32))

        return cls(table(sources), table(references))

    @staticmethod
    def _map(images: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
        xp, fp = xp.to(images.device), fp.to(images.device)
        channels = [interp1d(images[:, c], xp[:, c].contiguous(), fp[:, c].contiguous()) for c in range(3)]
        return torch.stack(channels, dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] source-like images in [0,1] -> the same with the references' pooled colours (no gradient)."""
        return self._map(images.float(), self.source, self.reference)

    @torch.no_grad()
    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] reference-like images -> the sources' pooled colours (the map back, for G_Y)."""
        return self._map(images.float(), self.reference, self.source)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


class AffineColourTransport:
    """The linear Monge-Kantorovich colour map between two photo sets, and back.

    ``matrix`` [3,3], ``source_mean`` / ``reference_mean`` [3]: forward(x) = clip(matrix (x - source_mean) +
    reference_mean, 0, 1) per pixel.
    """

    def __init__(self, matrix: torch.Tensor, source_mean: torch.Tensor, reference_mean: torch.Tensor):
        if matrix.shape != (3, 3) or source_mean.shape != (3,) or reference_mean.shape != (3,):
            raise ValueError("an affine colour transport needs a [3,3] matrix and two [3] means")
        self.matrix, self.source_mean, self.reference_mean = matrix.float(), source_mean.float(), reference_mean.float()
        self.inverse_matrix = torch.linalg.inv(matrix.double()).float()

    @classmethod
    def fit(cls, sources: Sequence[torch.Tensor], references: Sequence[torch.Tensor], ridge: float = 1e-6,
            max_pixels: int = MAX_POOLED_PIXELS) -> AffineColourTransport:
        """From two sets of [3,h,w] photos in [0,1] (up to ``max_pixels`` pixels of each set); ``ridge`` keeps a grey
        set's covariance invertible."""
        _require(sources, references)
        a, b = _pooled_pixels(sources, max_pixels), _pooled_pixels(references, max_pixels)
        cov_s, cov_r = np.cov(a.T) + ridge * np.eye(3), np.cov(b.T) + ridge * np.eye(3)
        root = _symmetric_sqrt(cov_s)
        root_inv = np.linalg.inv(root)
        matrix = root_inv @ _symmetric_sqrt(root @ cov_r @ root) @ root_inv
        return cls(torch.from_numpy(matrix), torch.from_numpy(a.mean(0)), torch.from_numpy(b.mean(0)))

    def matrix_and_offset(self, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """([3,3], [3]) with map(x) = clip(matrix x + offset, 0, 1); inverse: the map back (references -> sources)."""
        if inverse:
            return self.inverse_matrix, self.source_mean - self.inverse_matrix @ self.reference_mean
        return self.matrix, self.reference_mean - self.matrix @ self.source_mean

    def _map(self, images: torch.Tensor, inverse: bool) -> torch.Tensor:
        matrix, offset = (t.to(images.device) for t in self.matrix_and_offset(inverse))
        return (torch.einsum("ij,bjhw->bihw", matrix, images) + offset.view(1, 3, 1, 1)).clamp(0.0, 1.0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] source-like images in [0,1] -> the references' pooled colour mean and covariance."""
        return self._map(images.float(), inverse=False)

    @torch.no_grad()
    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] reference-like images -> the sources' colours (the map back, for G_Y)."""
        return self._map(images.float(), inverse=True)


def _require(sources: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> None:
    if not sources or not references:
        raise ValueError("colour transport needs at least one source and one reference photo")


def fit_colour_transport(sources: Sequence[torch.Tensor], references: Sequence[torch.Tensor],
                         kind: TransportKind = "quantile", max_pixels: int = MAX_POOLED_PIXELS
                         ) -> QuantileColourTransport | AffineColourTransport:
    """The transport of ``kind`` from two sets of [3,h,w] photos in [0,1] (up to ``max_pixels`` pixels of each set)."""
    if kind == "quantile":
        return QuantileColourTransport.fit(sources, references, max_pixels=max_pixels)
    if kind == "affine":
        return AffineColourTransport.fit(sources, references, max_pixels=max_pixels)
    raise ValueError(f"unknown colour transport {kind!r}; known: quantile, affine")
