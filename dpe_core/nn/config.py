"""Typed, frozen configs for the networks; saved in every checkpoint sidecar and rebuilt from it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GeneratorConfig(BaseModel):
    """Global U-Net generator (Chen et al. 2018) with the released defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["global_unet"] = "global_unet"
    train_size: int = Field(512, description="Side of the square the release trained at (px).")
    base_channels: int = Field(16, ge=1)
    bn_momentum: float = Field(0.1, description="torch momentum; the release's decay 0.9.")
    bn_eps: float = 1e-5
    init_scale: float = Field(1e-3, description="Variance-scaling factor: small so the untrained net ~ identity.")
    output_init_scale: float | None = Field(
        None, description="Variance-scaling factor of the last conv (the residual); None: init_scale. A small "
        "one with init_scale 1 starts at ~identity while the SELUs work in their non-linear range.")
    # Deviation (opt-in): the release adds a 3-channel residual image. "affine" makes the last conv emit 12
    # channels, a per-pixel 3x3 colour matrix M and offset b, output x + M x + b (M = b = 0 is the identity):
    # a gain that depends on the whole photo (exposure, contrast, white balance) is then a plain output of the
    # network instead of a product that the SELU layers must approximate from the global and local features.
    output: Literal["residual", "affine"] = Field("residual", description="Output head: residual image (release) "
                                                  "or per-pixel residual colour affine (x + M x + b).")
    # Deviation (opt-in): per-channel quantiles and means of the input feed a small MLP whose output is added to
    # the global vector. Telling an under-exposed photo from a dark scene needs its highest values, and the
    # global path (strided convs, batch norm, average pooling) approximates means, not quantiles; autocontrast,
    # which v3 trailed on exposure, reads exactly these. The MLP's last layer starts at zero: a model widened
    # with it computes the same function as before.
    global_stats: bool = Field(False, description="Feed input quantiles and means to the global vector.")
    # Deviation (opt-in): the same statistics also drive a direct per-image colour affine (3x3 matrix + offset)
    # added to the output. Measured (64 px, family A, validation pairs of seed 2033): that affine alone, an MLP
    # trained for 90 s, scores 21.1 dB where v3's U-Net scores 19.8 and autocontrast 20.0; through the global
    # vector the U-Net must rebuild a per-image gain from SELU features. Zero-initialised: a widened model
    # computes the same function; the U-Net keeps everything local.
    global_affine: bool = Field(False, description="Add a colour affine predicted from the input statistics.")
    # Deviation (opt-in): a per-channel tone curve, its knots predicted from the statistics of the input and of the
    # network's own output, added after everything else. The U-Net and the 3x3 affine cannot express a per-channel
    # curve (gamma, a highlight roll-off, an S-curve) as one global function: the U-Net rebuilds it from SELU
    # features pixel by pixel. Zero-initialised (the identity): a widened model computes the same function, and
    # `python -m dpe_core.training.refit --head post_curve` trains it alone on a frozen model.
    post_curve_knots: int = Field(0, ge=0, description="Knots of the output tone curve per channel (0: none; "
                                  "else at least 2, evenly spaced over [0, 1]).")
    # Deviation (opt-in, style training): a fixed colour map applied to the input before everything else, set
    # once from the unpaired colour transport of the training sets (TrainConfig.transport_init): per-channel
    # curves (257 levels) then a 3x3 matrix and offset, the identity until set. The U-Net then refines a
    # generator that starts at the transport instead of at the identity: on warm-contrast the map alone scored
    # 35.4 dB on held-out photos where the U-Net trained towards it for 300 updates reached 31.7 (docs/style.md).
    colour_prior: bool = Field(False, description="A fixed colour map (curves, then a colour affine) in front of "
                               "the U-Net, set from the training sets' colour transport.")
    # Deviation (opt-in): the U-Net and the colour affine act on the input stretched per channel to its
    # 0.1-99.9% range (what autocontrast does), while every statistics branch reads the *original* input. Measured
    # on the 57 gcompris validation photos: v6 run on the autocontrasted input gained +1.28 dB on A and +0.73 on B
    # but lost 5.6 dB of no-harm (moody photos stretched flat); with the original statistics in hand the affine
    # can learn when to give the stretch back (the inverse stretch is an affine of the statistics).
    input_stretch: bool = Field(False, description="Run the U-Net and the colour affine on the input stretched "
                                "per channel to its 0.1-99.9% range; statistics read the original input.")
    global_pool: int = Field(
        8,
        description="Adaptive average pool before the VALID global conv; exact at 512 px (8x8 after 6 halvings).",
    )


class CriticConfig(BaseModel):
    """Critic (WGAN discriminator) with the released defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["release_critic"] = "release_critic"
    base_channels: int = Field(16, ge=1)
    leaky_slope: float = 0.2
    head_size: int = Field(16, description="Kernel of the VALID head conv; 16x16 = feature size at 512 input.")
    init_scale: float = Field(1e-3, gt=0, description="Variance-scaling factor of every conv (the release's 1e-3).")
    # Deviation (opt-in). Measured with benchmarks/critic_probe.py (critic-only training, S photos vs L(R), scored
    # on held-out pairs t / L(t)): the release critic never separates a global look on held-out photos at 64 px
    # (its instance norms remove each image's channel statistics), so the generator gets no signal toward it.
    # "add" sums the conv score and an MLP of smooth colour statistics; "only" keeps the MLP alone (no convs:
    # critic steps cost ~nothing, so the release's 50:1 ratio is affordable on a CPU). The statistics are means
    # of per-pixel functions (soft CDF, moments), so the gradient penalty constrains them like the conv score.
    global_stats: Literal["off", "add", "only"] = Field("off", description="Colour-statistics branch of the critic.")
    # Deviation (opt-in): per-channel marginals cannot see a colour matrix (channels moving together); the
    # statistics branch also reads marginals along opponent axes and the channel correlations.
    cross_channel_stats: bool = Field(False, description="The statistics branch also reads opponent-axis soft CDFs "
                                      "and channel correlations (needs global_stats add or only).")

    @model_validator(mode="after")
    def _cross_channel_needs_the_branch(self) -> CriticConfig:
        if self.cross_channel_stats and self.global_stats == "off":
            raise ValueError("cross_channel_stats needs the statistics branch: set global_stats to 'add' or 'only'")
        return self
