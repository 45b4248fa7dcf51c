"""Inference-only form of the global U-Net generator: batch norm folded away, optional kernel enlargement.

``FoldedGenerator(generator, domain=0)`` computes exactly what ``generator.eval()(x, domain)`` computes (to float
rounding) with fewer memory passes, which is what bounds the eager forward on CPUs:

- every iBN layer (eval mode: a per-channel affine map) and the SELU output scale are folded into the convolution
  that *consumes* the normalised tensor. This is exact because the release pads symmetrically: padding copies
  values, so ``pad(a*s + b) == a*pad(s) + b`` and the affine map commutes with padding, average pooling and the
  VALID 8x8 global conv. What remains between two convolutions is one ``elu(alpha=SELU_ALPHA)``, done in place;
- the global vector's half of the 1x1 fuse conv is computed once per image as a bias (the release tiles the vector
  to 32x32 and concatenates it: same numbers, 32*32 times the work);
- symmetric padding is one copy into a pre-padded buffer and O(perimeter) copies for its ring
  (``fill_symmetric_border``) instead of flips and two concatenations;
- each decoder step writes upsample + concatenation + ELU + padding in one pass into a pre-padded buffer, the ELU
  on the half-size tensor and the skip taken after the encoder's own ELU (``_up_cat_padded``);
- channels_last is optional (``channels_last=True``): oneDNN's convolutions are faster on it, but some padding and
  concat kernels are slower; the Enhancer measures nothing at run time, the benchmark reports both.

Kernel enlargement (the original demo's full-resolution mode, used by ``Enhancer(mode="tiled")``): with
``rate=r > 1`` every k x k conv with k > 1 becomes a conv covering r*(k-1)+1 pixels, padded symmetrically by
r*(k-1)/2, strides unchanged, so that a photo r times larger than 512 px is seen at the scale the net was trained
at. ``kernels="resize"`` (the demo's behaviour as reproduced by its ports: weights resized to r*(k-1)+1 taps
with exact area interpolation, TF's resize_area, and scaled by k^2/K^2 so each kernel keeps its sum) or
``kernels="dilate"`` (a dilated conv with the original k x k taps: r^2 times cheaper, same footprint). Kernels are
enlarged before folding. The 8x8 VALID global conv is not enlarged (the global vector is computed once at 512 px
and passed in).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dpe_core.guided import _area_matrix
from dpe_core.nn.generator import (
    GlobalUNetGenerator,
    apply_head,
    apply_post_curve,
    global_colour_affine,
    statistics_if_needed,
    stats_vector,
    stretched_view,
)
from dpe_core.nn.layers import SELU_ALPHA, SELU_SCALE, IndividualBatchNorm2d, SymmetricConv2d, symmetric_pad

KernelEnlargement = Literal["resize", "dilate"]

# One-sided receptive field (pixels at the input) of the local path at rate 1: sum over the convs of
# (k-1)/2 * jump for enc1..enc5, local5, dec4..dec1, out1, out2 (1+2+4+8+16+16+16+8+4+2+1+1 = 79), plus one jump per
# stride-2 level (15 -> 16) for the off-centre sampling of strided convs and nearest upsampling.
_RF_PER_RATE = 79
_RF_SLACK = 16
ALIGN = 16  # the local path halves four times: tiles must start on multiples of 16 to sample the same grid


def receptive_field(rate: int = 1) -> int:
    """One-sided receptive field in input pixels of one output pixel of the local path at kernel rate ``rate``."""
    return _RF_PER_RATE * rate + _RF_SLACK


def tile_margin(rate: int = 1) -> int:
    """Tile overlap (each side) that makes tiled inference identical to a whole-image forward: the receptive field
    rounded up to a multiple of 16."""
    return ALIGN * math.ceil(receptive_field(rate) / ALIGN)


def sym_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Symmetric padding (edge pixel repeated, numpy 'symmetric') of [B,C,H,W] by p on every side; keeps
    channels_last."""
    if p == 0:
        return x
    h, w = x.shape[-2:]
    if p > h or p > w:
        return symmetric_pad(x, p)
    buf = padded_empty(x, x.shape[1], h, w, p)
    buf[:, :, p : p + h, p : p + w] = x
    return fill_symmetric_border(buf, p)


def padded_empty(like: torch.Tensor, channels: int, h: int, w: int, p: int) -> torch.Tensor:
    """An uninitialised [B,channels,h+2p,w+2p] buffer with like's dtype, device and layout (channels_last or not).
    One copy into its interior plus the ring is cheaper than torch's replicate pad on channels_last (1.45 against
    4.5 ms for 16 channels at 512 px, one thread)."""
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return torch.empty((like.shape[0], channels, h + 2 * p, w + 2 * p), dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def fill_symmetric_border(buf: torch.Tensor, p: int) -> torch.Tensor:
    """Fill the p-pixel ring of buf [B,C,H+2p,W+2p] in place from its interior, as sym_pad would (p <= H, W)."""
    if p == 0:
        return buf
    h, w = buf.shape[-2] - 2 * p, buf.shape[-1] - 2 * p
    for j in range(p):  # rows first, then whole columns, so that the corners come out right
        buf[:, :, p - 1 - j, p : p + w] = buf[:, :, p + j, p : p + w]
        buf[:, :, p + h + j, p : p + w] = buf[:, :, p + h - 1 - j, p : p + w]
    for j in range(p):
        buf[:, :, :, p - 1 - j] = buf[:, :, :, p + j]
        buf[:, :, :, p + w + j] = buf[:, :, :, p + w - 1 - j]
    return buf


def _bn_affine(bn: IndividualBatchNorm2d, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with bn(selu_scale * e) == a * e + b per channel, for e = elu(raw, SELU_ALPHA) (eval mode)."""
    b_n = bn.sets[domain]
    inv = torch.rsqrt(b_n.running_var.double() + b_n.eps)
    gamma = b_n.weight.double() if b_n.weight is not None else torch.ones_like(inv)
    beta = b_n.bias.double() if b_n.bias is not None else torch.zeros_like(inv)
    a = gamma * inv
    return a * SELU_SCALE, beta - a * b_n.running_mean.double()


def _enlarge(conv: SymmetricConv2d, rate: int, kernels: KernelEnlargement) -> tuple[torch.Tensor, int, int]:
    """(weight, dilation, symmetric padding) of conv with its kernel enlarged by rate (rate 1: unchanged)."""
    k = conv.kernel_size[0]
    w = conv.weight.detach().double()
    pad = conv.symmetric_padding
    if rate == 1 or k == 1 or pad == 0:
        return w, 1, pad
    big = rate * (k - 1) + 1
    if kernels == "dilate":
        return w, rate, rate * pad
    # Exact area resampling (TF's resize_area): each new tap averages the old kernel over the area it covers.
    _, m = _area_matrix(k, big, 0, k, torch.float64)  # [big, k], rows sum to 1
    w = torch.einsum("ak,oikl,bl->oiab", m, w, m)
    return w * (k * k) / (big * big), 1, rate * pad


class _Conv:
    """Folded conv parameters: float64 while folding, materialised by FoldedGenerator."""

    def __init__(self, conv: SymmetricConv2d, rate: int, kernels: KernelEnlargement):
        self.weight, self.dilation, self.pad = _enlarge(conv, rate, kernels)
        self.bias = (
            conv.bias.detach().double()
            if conv.bias is not None
            else torch.zeros(self.weight.shape[0], dtype=torch.float64)
        )
        self.stride = conv.stride[0]

    def fold_input(self, a: torch.Tensor, b: torch.Tensor, channels: slice | None = None) -> None:
        """The conv's input (channels ``channels``) is a*e + b: move a and b into weight and bias."""
        sl = channels or slice(0, self.weight.shape[1])
        w = self.weight[:, sl]
        self.bias = self.bias + (w * b.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        self.weight = self.weight.clone()
        self.weight[:, sl] = w * a.view(1, -1, 1, 1)


class FoldedGenerator(nn.Module):
    """Inference-only generator: forward(x [B,3,H,W] in [0,1], global_vector=None) -> x + residual (unclipped).

    Same numbers as ``generator.eval()(x, domain)`` at rate 1. Buffers follow ``.to(device)``; no autograd.
    """

    conv_names = (
        "enc1",
        "enc2",
        "enc3",
        "enc4",
        "enc5",
        "global1",
        "global2",
        "global3",
        "global4",
        "local5",
        "fuse",
        "dec4",
        "dec3",
        "dec2",
        "dec1",
        "out1",
        "out2",
    )

    def __init__(
        self,
        generator: GlobalUNetGenerator,
        domain: int = 0,
        rate: int = 1,
        kernels: KernelEnlargement = "resize",
        channels_last: bool = False,
    ):
        super().__init__()
        if rate < 1:
            raise ValueError(f"kernel rate must be >= 1, got {rate}")
        if kernels not in ("resize", "dilate"):
            raise ValueError(f"kernels must be 'resize' or 'dilate', got {kernels!r}")
        g = generator
        self.rate, self.kernels, self.domain, self.channels_last = rate, kernels, domain, channels_last
        self.global_pool = copy.deepcopy(g.global_pool)
        self.stats = copy.deepcopy(g.stats) if g.stats is not None else None
        self.affine_mlp = copy.deepcopy(g.affine_mlp) if g.affine_mlp is not None else None
        self.post_curve = copy.deepcopy(g.post_curve) if g.post_curve is not None else None
        self.colour_prior = copy.deepcopy(g.colour_prior) if g.colour_prior is not None else None
        self.input_stretch = g.config.input_stretch

        def conv(name: str) -> SymmetricConv2d:
            module = getattr(g, name)
            return module.conv if hasattr(module, "conv") else module

        c = {
            name: _Conv(conv(name), rate if name not in ("global3", "global4") else 1, kernels)
            for name in self.conv_names
        }
        bn = {
            "enc1": g.enc1.bn,
            "enc2": g.enc2.bn,
            "enc3": g.enc3.bn,
            "enc4": g.enc4.bn,
            "enc5": g.enc5.bn,
            "global1": g.global1.bn,
            "global2": g.global2.bn,
            "fuse": g.fuse_bn,
            "dec4": g.dec4_bn,
            "dec3": g.dec3_bn,
            "dec2": g.dec2_bn,
            "dec1": g.dec1_bn,
            "out1": g.out1.bn,
        }
        # Each normalised tensor -> the conv(s) that consume it.
        consumers = {
            "enc1": ["enc2"],
            "enc2": ["enc3"],
            "enc3": ["enc4"],
            "enc4": ["enc5"],
            "enc5": ["global1", "local5"],
            "global1": ["global2"],
            "global2": ["global3"],
            "fuse": ["dec4"],
            "dec4": ["dec3"],
            "dec3": ["dec2"],
            "dec2": ["dec1"],
            "dec1": ["out1"],
            "out1": ["out2"],
        }
        for producer, users in consumers.items():
            a, b = _bn_affine(bn[producer], domain)
            for user in users:
                c[user].fold_input(a, b)
        # global3 -> SELU -> global4: only the SELU scale to fold.
        c["global4"].weight = c["global4"].weight * SELU_SCALE
        self.specs: dict[str, tuple[int, int, int]] = {}
        for name, spec in c.items():
            weight = spec.weight.float()
            if name == "fuse":  # split: local half stays a 1x1 conv, the global half becomes a per-image bias
                half = weight.shape[1] // 2
                self.register_buffer("fuse_global_w", weight[:, half:, 0, 0].contiguous())
                weight = weight[:, :half].contiguous()
            if channels_last and weight.shape[-1] > 1:
                weight = weight.contiguous(memory_format=torch.channels_last)
            self.register_buffer(f"{name}_w", weight)
            self.register_buffer(f"{name}_b", spec.bias.float())
            self.specs[name] = (spec.stride, spec.dilation, spec.pad)
        self.requires_grad_(False)

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._conv_padded(name, sym_pad(x, self.specs[name][2]))

    def _conv_padded(self, name: str, padded: torch.Tensor) -> torch.Tensor:
        stride, dilation, _ = self.specs[name]
        return F.conv2d(padded, getattr(self, f"{name}_w"), getattr(self, f"{name}_b"), stride, 0, dilation)

    @torch.compiler.disable  # inductor's loops for these strided channels_last copies ran 4x slower than eager
    def _up_cat_padded(self, t: torch.Tensor, skip: torch.Tensor, pad: int) -> torch.Tensor:
        """sym_pad(elu(cat([nearest_upsample(t), skip])), pad) for an already-ELU'd skip, written in one pass.

        Why: upsampling, concatenating, ELU-ing and padding 48-192 channels at full size were memory passes over
        the largest tensors of the net, 38% of the fp32 forward at 512 px (the convolutions themselves ran at
        about the matmul's speed). Here the ELU runs on t at a quarter of the pixels, the upsampling is four
        strided copies straight into the padded buffer beside the skip, and only the border ring is copied again.
        """
        b, ct, h, w = t.shape
        big_h, big_w = skip.shape[-2:]
        if pad > big_h or pad > big_w:  # numpy's repeated mirror: the general path
            up = F.interpolate(t, size=(big_h, big_w), mode="nearest")
            return sym_pad(self._elu(torch.cat([up, skip], dim=1)), pad)
        buf = padded_empty(skip, ct + skip.shape[1], big_h, big_w, pad)
        inner = buf[:, :, pad : pad + big_h, pad : pad + big_w]
        te = F.elu(t, alpha=SELU_ALPHA).to(skip.dtype)
        if big_h == 2 * h and big_w == 2 * w:
            for dy in (0, 1):  # four plain strided copies: a broadcasting copy here ran 4x slower
                for dx in (0, 1):
                    inner[:, :ct, dy::2, dx::2].copy_(te)
        else:
            inner[:, :ct].copy_(F.interpolate(te, size=(big_h, big_w), mode="nearest"))
        inner[:, ct:].copy_(skip)
        fill_symmetric_border(buf, pad)
        return buf

    @staticmethod
    def _elu(x: torch.Tensor) -> torch.Tensor:
        return F.elu_(x, alpha=SELU_ALPHA)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(e5, [e1..e4]): the encoder's activations after their ELU (the skips, which the decoder would ELU
        again after the concatenation: elu of a concatenation is the concatenation of the elus)."""
        skips = []
        e = x
        for name in ("enc1", "enc2", "enc3", "enc4"):
            e = self._elu(self._conv(name, e))
            skips.append(e)
        return self._elu(self._conv("enc5", e)), skips

    def _global(self, e5: torch.Tensor, stats: torch.Tensor | None) -> torch.Tensor:
        h = self._elu(self._conv("global1", e5))
        h = self._elu(self._conv("global2", h))
        h = self._elu(self._conv("global3", self.global_pool(h)))
        g = self._conv("global4", h)
        return g if self.stats is None else g + stats_vector(self.stats, stats).to(g.dtype)

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        """The global vector [B,128,1,1] (the same numbers as GlobalUNetGenerator.global_feature)."""
        x = self._prepare(x)
        stats = statistics_if_needed(x, None, self.stats, stretch=self.input_stretch)
        x, stats, _ = stretched_view(x, stats, self.input_stretch)
        e5, _ = self._encode(x)
        return self._global(e5, stats)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"generator expects [B,3,H,W] RGB, got shape {tuple(x.shape)}")
        if self.colour_prior is not None:
            x = self.colour_prior(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor, global_vector: torch.Tensor | None = None,
                stats: torch.Tensor | None = None, post_stats: torch.Tensor | None = None,
                post_curve: bool = True) -> torch.Tensor:
        """As GlobalUNetGenerator.forward (same arguments but ``domain``, fixed at construction)."""
        x = self._prepare(x)
        stats = statistics_if_needed(x, stats, self.stats if global_vector is None else None, self.affine_mlp,
                                     self.post_curve, stretch=self.input_stretch)
        x, stats, affine_stats = stretched_view(x, stats, self.input_stretch)
        e5, skips = self._encode(x)
        g = self._global(e5, stats) if global_vector is None else global_vector.to(e5.dtype)
        local = self._conv("local5", e5)
        gbias = torch.einsum("oc,bc->bo", self.fuse_global_w, g.flatten(1)) + self.fuse_b
        d = F.conv2d(local, self.fuse_w, None) + gbias[:, :, None, None]
        d = self._elu(d)
        t = self._conv("dec4", d)
        for consumer, skip in zip(("dec3", "dec2", "dec1", "out1"), reversed(skips), strict=True):
            t = self._conv_padded(consumer, self._up_cat_padded(t, skip, self.specs[consumer][2]))
        d = self._elu(t)
        y = apply_head(x, self._conv("out2", d))
        if self.affine_mlp is not None:
            y = y + global_colour_affine(self.affine_mlp, x, affine_stats).to(y.dtype)
        if self.post_curve is not None and post_curve:
            y = apply_post_curve(self.post_curve, y, stats, post_stats).to(y.dtype)
        return y


def enlarged_rate(height: int, width: int, train_size: int = 512) -> int:
    """The demo's kernel rate for a photo of this size: round(max(h, w) / 512), at least 1."""
    return max(1, round(max(height, width) / train_size))
