"""Global U-Net generator of the Deep Photo Enhancer, faithful to the released TF code."""

from __future__ import annotations

import torch
from torch import nn

from dpe_core.nn.config import GeneratorConfig
from dpe_core.nn.layers import (
    ConvSeluBN,
    IndividualBatchNorm2d,
    SymmetricConv2d,
    interp1d,
    selu,
    upsample_to,
    variance_scaling_,
)


class GlobalUNetGenerator(nn.Module):
    """Global U-Net: x [B,3,H,W] RGB in [0,1] -> x + residual, [B,3,H,W], not clipped.

    Channel plan at 512x512 (base 16): enc 16@512, 32@256, 64@128, 128@64, 128@32; global 128@16, 128@8,
    128@1; fused 128@32; decoder 256@64, 192@128, 96@256, 48@512; out 16@512 -> 3@512.
    ``domain`` selects the iBN set: 0 for real photos, 1 for generated ones (the cycle pass).
    """

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = config = config or GeneratorConfig()
        c = config.base_channels
        m, e = config.bn_momentum, config.bn_eps
        self.enc1 = ConvSeluBN(3, c, 3, 1, m, e)
        self.enc2 = ConvSeluBN(c, 2 * c, 5, 2, m, e)
        self.enc3 = ConvSeluBN(2 * c, 4 * c, 5, 2, m, e)
        self.enc4 = ConvSeluBN(4 * c, 8 * c, 5, 2, m, e)
        self.enc5 = ConvSeluBN(8 * c, 8 * c, 5, 2, m, e)
        # Global path: two more halvings, then an 8x8 VALID conv reduces to one 128-d vector per image.
        self.global1 = ConvSeluBN(8 * c, 8 * c, 5, 2, m, e)
        self.global2 = ConvSeluBN(8 * c, 8 * c, 5, 2, m, e)
        # Deviation: at sizes other than train_size the 8x8 VALID conv would not give 1x1; an adaptive
        # average pool to global_pool x global_pool in front of it is the identity at train_size.
        self.global_pool = nn.AdaptiveAvgPool2d(config.global_pool)
        self.global3 = SymmetricConv2d(8 * c, 8 * c, config.global_pool, valid=True)
        self.global4 = SymmetricConv2d(8 * c, 8 * c, 1)
        self.local5 = SymmetricConv2d(8 * c, 8 * c, 3)
        self.fuse = SymmetricConv2d(16 * c, 8 * c, 1)
        self.fuse_bn = IndividualBatchNorm2d(8 * c, m, e)
        # Decoder: conv3x3, nearest x2, concat the encoder's *raw* conv output, SELU, iBN.
        self.dec4 = SymmetricConv2d(8 * c, 8 * c, 3)
        self.dec4_bn = IndividualBatchNorm2d(16 * c, m, e)
        self.dec3 = SymmetricConv2d(16 * c, 8 * c, 3)
        self.dec3_bn = IndividualBatchNorm2d(12 * c, m, e)
        self.dec2 = SymmetricConv2d(12 * c, 4 * c, 3)
        self.dec2_bn = IndividualBatchNorm2d(6 * c, m, e)
        self.dec1 = SymmetricConv2d(6 * c, 2 * c, 3)
        self.dec1_bn = IndividualBatchNorm2d(3 * c, m, e)
        self.out1 = ConvSeluBN(3 * c, c, 3, 1, m, e)
        self.out2 = SymmetricConv2d(c, head_channels(config), 3)
        self.stats = stats_mlp(8 * c) if config.global_stats else None
        self.affine_mlp = affine_mlp(STRETCH_FEATURES if config.input_stretch else STAT_FEATURES) \
            if config.global_affine else None
        self.post_curve = post_curve_mlp(config.post_curve_knots) if config.post_curve_knots else None
        self.colour_prior = ColourPrior() if config.colour_prior else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                variance_scaling_(module, config.init_scale)
        if config.output_init_scale is not None:
            variance_scaling_(self.out2, config.output_init_scale)

    def forward(self, x: torch.Tensor, domain: int = 0, global_vector: torch.Tensor | None = None,
                stats: torch.Tensor | None = None, post_stats: torch.Tensor | None = None,
                post_curve: bool = True) -> torch.Tensor:
        """x [B,3,H,W] in [0,1] -> enhanced [B,3,H,W] (unclipped).

        ``global_vector`` [B,128,1,1], ``stats`` [B,STAT_FEATURES] (STRETCH_FEATURES with input_stretch:
        model_statistics) and ``post_stats`` [B,STAT_FEATURES], when
        given, replace the global feature, the input statistics and the pre-curve output statistics computed
        here (tiled full-resolution inference computes them once on the working-size copy). post_curve=False
        leaves the output tone curve out (to compute post_stats).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"generator expects [B,3,H,W] RGB, got shape {tuple(x.shape)}")
        if self.colour_prior is not None:
            x = self.colour_prior(x)
        stats = statistics_if_needed(x, stats, self.stats if global_vector is None else None, self.affine_mlp,
                                     self.post_curve, stretch=self.config.input_stretch)
        x, stats, affine_stats = stretched_view(x, stats, self.config.input_stretch)
        a5, skips = self._encode(x, domain)
        g = self._global(a5, stats, domain) if global_vector is None else global_vector
        local = self.local5(a5)
        fused = torch.cat([local, g.expand(-1, -1, local.shape[-2], local.shape[-1])], dim=1)
        d = self.fuse_bn(selu(self.fuse(fused)), domain)
        for conv, bn, skip in zip(
            (self.dec4, self.dec3, self.dec2, self.dec1),
            (self.dec4_bn, self.dec3_bn, self.dec2_bn, self.dec1_bn),
            reversed(skips),
            strict=True,
        ):
            d = bn(selu(torch.cat([upsample_to(conv(d), skip), skip], 1)), domain)
        d, _ = self.out1(d, domain)
        y = apply_head(x, self.out2(d))
        if self.affine_mlp is not None:
            y = y + global_colour_affine(self.affine_mlp, x, affine_stats)
        if self.post_curve is not None and post_curve:
            y = apply_post_curve(self.post_curve, y, stats, post_stats)
        return y

    def global_feature(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        """The global vector [B,128,1,1] for x [B,3,H,W] in [0,1]."""
        if self.colour_prior is not None:
            x = self.colour_prior(x)
        stats = statistics_if_needed(x, None, self.stats, stretch=self.config.input_stretch)
        x, stats, _ = stretched_view(x, stats, self.config.input_stretch)
        a5, _ = self._encode(x, domain)
        return self._global(a5, stats, domain)

    def _encode(self, x: torch.Tensor, domain: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        a, raw_skips = x, []
        for block in (self.enc1, self.enc2, self.enc3, self.enc4):
            a, raw = block(a, domain)
            raw_skips.append(raw)
        a5, _ = self.enc5(a, domain)
        return a5, raw_skips

    def _global(self, a5: torch.Tensor, stats: torch.Tensor | None, domain: int) -> torch.Tensor:
        g, _ = self.global1(a5, domain)
        g, _ = self.global2(g, domain)
        g = self.global4(selu(self.global3(self.global_pool(g))))
        return g if self.stats is None else g + stats_vector(self.stats, stats).to(g.dtype)


class ColourPrior(nn.Module):
    """A fixed colour map x [B,3,H,W] in [0,1] -> clip(M curve(x) + b, 0, 1): per-channel piecewise-linear curves
    through (curve_in[k, c], curve_out[k, c]) (constant beyond the ends), then a 3x3 matrix M and offset b.
    Buffers, not parameters: set once (``set_curves`` / ``set_affine``), saved with the model, never trained.
    The identity until set."""

    LEVELS = 257

    def __init__(self):
        super().__init__()
        grid = torch.linspace(0.0, 1.0, self.LEVELS)[:, None].repeat(1, 3)
        self.register_buffer("curve_in", grid.clone())
        self.register_buffer("curve_out", grid.clone())
        self.register_buffer("matrix", torch.eye(3))
        self.register_buffer("offset", torch.zeros(3))

    @torch.no_grad()
    def set_curves(self, curve_in: torch.Tensor, curve_out: torch.Tensor) -> None:
        """Per-channel curves: [LEVELS, 3] knots, curve_in non-decreasing per column, both in [0,1]."""
        if curve_in.shape != self.curve_in.shape or curve_out.shape != self.curve_out.shape:
            raise ValueError(f"curves must be [{self.LEVELS}, 3], got {tuple(curve_in.shape)}, "
                             f"{tuple(curve_out.shape)}")
        if bool((curve_in.diff(dim=0) < 0).any()):
            raise ValueError("curve_in must be non-decreasing per channel")
        self.curve_in.copy_(curve_in)
        self.curve_out.copy_(curve_out)

    @torch.no_grad()
    def set_affine(self, matrix: torch.Tensor, offset: torch.Tensor) -> None:
        """The colour affine after the curves: matrix [3,3], offset [3] (in [0,1] units)."""
        if matrix.shape != (3, 3) or offset.shape != (3,):
            raise ValueError(f"a colour affine needs a [3,3] matrix and a [3] offset, got {tuple(matrix.shape)}, "
                             f"{tuple(offset.shape)}")
        self.matrix.copy_(matrix)
        self.offset.copy_(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            v = x.float()
            curved = torch.stack([interp1d(v[:, c], self.curve_in[:, c].contiguous(),
                                           self.curve_out[:, c].contiguous()) for c in range(3)], dim=1)
            out = torch.einsum("ij,bjhw->bihw", self.matrix, curved) + self.offset.view(1, 3, 1, 1)
            return out.clamp(0.0, 1.0).to(x.dtype)


# Quantiles per channel: the tails say where black and white are (exposure, haze, contrast), the middle where
# the mid-tones sit (gamma); per-channel means give the cast, the mean channel spread the saturation.
STAT_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
STAT_FEATURES = 3 * len(STAT_QUANTILES) + 3 + 1


def input_statistics(x: torch.Tensor) -> torch.Tensor:
    """x [B,3,H,W] in [0,1] -> [B, STAT_FEATURES] float32: per-channel quantiles (STAT_QUANTILES), per-channel
    means, and the mean of max - min over the channels (a saturation measure), all in [0,1] units."""
    flat = x.float().reshape(x.shape[0], 3, -1)
    q = torch.quantile(flat, flat.new_tensor(STAT_QUANTILES), dim=2)  # [Q,B,3]
    spread = (flat.amax(dim=1) - flat.amin(dim=1)).mean(dim=1, keepdim=True)
    return torch.cat([q.permute(1, 2, 0).reshape(x.shape[0], -1), flat.mean(dim=2), spread], dim=1)


# The stretch of GeneratorConfig.input_stretch: autocontrast's 0.1% clip per channel (the probe that measured
# +1.28 dB on A used it; 0.5% lost half of that). A span under MIN_STRETCH_SPAN (a flat grey card) is stretched
# no further than 16x, so noise is not blown up to full range.
STRETCH_QUANTILES = (0.001, 0.999)
MIN_STRETCH_SPAN = 1.0 / 16
# With input_stretch the statistics are [those of the stretched photo | those of the original | the 6 bounds]: the
# branches read the first block (what the U-Net sees), the colour affine all three (what the stretch did).
STRETCH_FEATURES = 2 * STAT_FEATURES + 6


def stretch_bounds(x: torch.Tensor) -> torch.Tensor:
    """x [B,3,H,W] in [0,1] -> [B,6] float32: per-channel low (0.1%) then high (99.9%) quantiles, [0,1] units."""
    flat = x.float().reshape(x.shape[0], 3, -1)
    q = torch.quantile(flat, flat.new_tensor(STRETCH_QUANTILES), dim=2)  # [2,B,3]
    return torch.cat([q[0], q[1]], dim=1)


def _stretch(x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        low = bounds[:, :3, None, None].float()
        span = (bounds[:, 3:, None, None].float() - low).clamp(min=MIN_STRETCH_SPAN)
        return ((x.float() - low) / span).clamp(0.0, 1.0).to(x.dtype)


def model_statistics(x: torch.Tensor, stretch: bool = False) -> torch.Tensor:
    """What a generator's statistics branches read, float32 in [0,1] units: input_statistics(x) [B, STAT_FEATURES];
    with ``stretch`` (GeneratorConfig.input_stretch) [B, STRETCH_FEATURES]: input_statistics of the stretched x,
    input_statistics(x), stretch_bounds(x)."""
    if not stretch:
        return input_statistics(x)
    bounds = stretch_bounds(x)
    return torch.cat([input_statistics(_stretch(x, bounds)), input_statistics(x), bounds], dim=1)


def stretch_input(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """x [B,3,H,W] stretched per channel to [0,1] (clipped) by the bounds in ``stats`` = model_statistics(...,
    stretch=True) of the whole photo, so that tiles agree; x's dtype."""
    if stats.shape[1] != STRETCH_FEATURES:
        raise ValueError(f"input_stretch needs statistics with stretch bounds ({STRETCH_FEATURES} columns), got "
                         f"{stats.shape[1]}")
    return _stretch(x, stats[:, 2 * STAT_FEATURES :])


def stretched_view(x: torch.Tensor, stats: torch.Tensor | None, stretch: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(the input the U-Net reads, the statistics its branches read, those the colour affine reads): (x, stats,
    stats) without ``stretch``, else (stretch_input(x, stats), stats[:, :STAT_FEATURES], stats)."""
    if not stretch:
        return x, stats, stats
    return stretch_input(x, stats), stats[:, :STAT_FEATURES], stats


def statistics_if_needed(x: torch.Tensor, stats: torch.Tensor | None, *branches: nn.Module | None,
                         stretch: bool = False) -> torch.Tensor | None:
    """``stats`` when given, else model_statistics(x, stretch) when any of ``branches`` exists or ``stretch``
    (computed once per forward for all of them), else None: a model without statistics branches never pays for
    the quantiles."""
    if stats is not None or (not stretch and all(b is None for b in branches)):
        return stats
    return model_statistics(x, stretch)


def stats_mlp(out_channels: int, hidden: int = 64) -> nn.Sequential:
    """Statistics [B, STAT_FEATURES] -> a global-vector offset [B, out_channels]; the last layer starts at zero."""
    mlp = nn.Sequential(nn.Linear(STAT_FEATURES, hidden), nn.SELU(), nn.Linear(hidden, out_channels))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


def affine_mlp(features: int = STAT_FEATURES, hidden: int = 128) -> nn.Sequential:
    """Statistics [B, features] -> a colour affine [B,12] (row-major 3x3 matrix, then offset); last layer zero
    (the identity correction)."""
    mlp = nn.Sequential(nn.Linear(features, hidden), nn.SELU(), nn.Linear(hidden, hidden), nn.SELU(),
                        nn.Linear(hidden, 12))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def global_colour_affine(mlp: nn.Module, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """M x + b [B,3,H,W] for x [B,3,H,W], with (M, b) = mlp(stats) per image (float32, outside autocast)."""
    with torch.autocast(x.device.type, enabled=False):
        p = mlp(stats.float())
        matrix = p[:, :9].reshape(-1, 3, 3)
        return torch.einsum("bij,bjhw->bihw", matrix, x.float()) + p[:, 9:, None, None]


def post_curve_mlp(knots: int, hidden: int = 128) -> nn.Sequential:
    """Statistics of the input and of the output [B, 2*STAT_FEATURES] -> per-channel curve offsets [B, 3*knots];
    last layer zero (the identity curve)."""
    if knots < 2:
        raise ValueError(f"post_curve_knots must be 0 (off) or at least 2, got {knots}")
    mlp = nn.Sequential(nn.Linear(2 * STAT_FEATURES, hidden), nn.SELU(), nn.Linear(hidden, hidden), nn.SELU(),
                        nn.Linear(hidden, 3 * knots))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def apply_post_curve(mlp: nn.Sequential, y: torch.Tensor, stats: torch.Tensor,
                     post_stats: torch.Tensor | None = None) -> torch.Tensor:
    """y [B,3,H,W] (unclipped) + a per-channel piecewise-linear offset curve of clip(y, 0, 1), float32.

    The knots (evenly spaced over [0, 1]) come from mlp([stats, post_stats]): ``stats`` [B, STAT_FEATURES] of
    the input, ``post_stats`` of clip(y) (computed here when None; tiles pass the whole photo's)."""
    knots = mlp[-1].out_features // 3
    with torch.autocast(y.device.type, enabled=False):
        v = y.float().clamp(0, 1)
        if post_stats is None:
            post_stats = input_statistics(v)
        offsets = mlp(torch.cat([stats.float(), post_stats.float()], dim=1)).reshape(-1, 3, knots)
        b, c, h, w = v.shape
        t = v.reshape(b, c, h * w) * (knots - 1)
        left = t.floor().clamp(max=knots - 2).long()
        frac = t - left
        curve = offsets.gather(2, left) * (1 - frac) + offsets.gather(2, left + 1) * frac
        return y.float() + curve.reshape(b, c, h, w)


def stats_vector(mlp: nn.Module, stats: torch.Tensor) -> torch.Tensor:
    """The statistics branch's global-vector offset [B,C,1,1] for input statistics [B, STAT_FEATURES]."""
    with torch.autocast(stats.device.type, enabled=False):
        out = mlp(stats.float())
    return out[:, :, None, None]


def head_channels(config: GeneratorConfig) -> int:
    """Channels of the last conv: 3 (residual image) or 12 (3x3 colour matrix + offset per pixel)."""
    return 12 if config.output == "affine" else 3


def apply_head(x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """x [B,3,H,W] and the last conv's output [B,3|12,H,W] -> x + residual, or x + M x + b with M = head[:, :9]
    as a row-major 3x3 matrix per pixel and b = head[:, 9:]; unclipped."""
    if head.shape[1] == 3:
        return x + head
    b, _, h, w = head.shape
    matrix = head[:, :9].reshape(b, 3, 3, h, w)
    return x + (matrix * x.unsqueeze(1)).sum(dim=2) + head[:, 9:]


def widen_residual_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A residual-head state dict -> the affine head's, computing the same function (M = 0, b = old residual)."""
    state = dict(state)
    for key in ("out2.weight", "out2.bias"):
        old = state[key]
        new = old.new_zeros((12, *old.shape[1:]))
        new[9:] = old
        state[key] = new
    return state


def load_widened(generator: GlobalUNetGenerator, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict saved without the opt-in parts of ``generator`` (affine head, statistics branch) so that
    ``generator`` computes the saved model's function; any other mismatch raises ValueError."""
    if generator.config.output == "affine" and state["out2.weight"].shape[0] == 3:
        state = widen_residual_head(state)
    first = "affine_mlp.0.weight"
    wanted = generator.affine_mlp[0].in_features if generator.affine_mlp is not None else 0
    if first in state and state[first].shape[1] < wanted:
        # Widened to read the original photo's statistics too (input_stretch): those columns start at zero, so the
        # affine first computes what it did on the statistics of the photo the U-Net sees.
        state = dict(state)
        old = state[first]
        state[first] = torch.cat([old, old.new_zeros(old.shape[0], wanted - old.shape[1])], dim=1)
    missing, unexpected = generator.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.startswith(("stats.", "affine_mlp.", "post_curve.", "colour_prior."))]
    stray += list(unexpected)
    if stray:
        raise ValueError(f"state dict does not fit this generator: {sorted(stray)[:8]}")


def conv_parameter_count(module: nn.Module) -> int:
    """Number of conv weights and biases (the paper's 'parameters'; BN sets excluded)."""
    return sum(p.numel() for m in module.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
