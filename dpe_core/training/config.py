"""Typed training configuration; saved in every checkpoint sidecar and beside every output."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dpe_core.losses import AdaptiveLambdaConfig
from dpe_core.nn.config import CriticConfig, GeneratorConfig

TrainMode = Literal["two-way", "one-way", "supervised"]


class DataConfig(BaseModel):
    """Where photos come from. URLs are fsspec URLs (local folders, s3://bucket/prefix, memory://...).

    two-way: source_url (photos to enhance, domain X) + reference_url (style to imitate, domain Y).
    one-way / supervised: input_url + target_url with matching relative names, or degrade_url (real photos
    whose synthetic global degradations become the inputs, the photos the targets).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_url: str | None = None
    reference_url: str | None = None
    input_url: str | None = None
    target_url: str | None = None
    degrade_url: str | None = None
    degrade_strength: float = Field(1.0, ge=0, le=2)
    holdout: int = Field(0, ge=0, description="Photos (sorted, last ones) kept out of training for evaluation.")
    # Named splits beat "the last N": a fixed validation split chooses checkpoints, a test split is never read.
    val_names: list[str] = Field(default_factory=list, description="File names used only for evaluation.")
    exclude_names: list[str] = Field(default_factory=list, description="File names never read (the test split).")
    extra_train_urls: list[str] = Field(
        default_factory=list,
        description="degrade_url: further photo files (fsspec URLs) used for training only, never for evaluation.")
    extra_val_urls: list[str] = Field(
        default_factory=list,
        description="degrade_url: further photo files (fsspec URLs) used only for evaluation, beside val_names.")
    clean_share: float = Field(0.0, ge=0, le=1, description="Share of undamaged inputs (target = input).")
    target_jitter: float = Field(0.0, ge=0, le=1, description="Strength of a mild family-A draw applied to the "
                                 "photo before it becomes the target (0: the photo as it is).")
    load_size: int | None = Field(None, ge=32, description="Long side of cached photos (crops); None: image_size.")
    crop_scale: tuple[float, float] = Field((1.0, 1.0), description="Crop side fractions (low, high) of a photo.")
    whole_share: float = Field(1.0, ge=0, le=1, description="Share of draws that use the whole photo, not a crop.")
    eval_degradations: int = Field(1, ge=1, le=16, description="Family-A degradations per validation photo.")
    # Credentials never land in checkpoints, model.json or logs: excluded from every dump and from repr.
    storage_options: dict = Field(default_factory=dict, exclude=True, repr=False)


class TrainConfig(BaseModel):
    """Everything that defines a training run. Defaults are the release's where it had one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: TrainMode = "two-way"
    data: DataConfig = Field(default_factory=DataConfig)
    image_size: int = Field(512, ge=32, description="Training square side (px); the release used 512.")
    batch_size: int = Field(3, ge=1)
    steps: int = Field(1000, ge=1, description="Iterations; in GAN modes one iteration is one critic step.")
    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    # A fine-tuned U-Net wants a small lr; a new, zero-initialised head on top of it (the statistics MLPs) learns
    # in 90 s at 1e-3 and crawls at 7.5e-5. Keys are parameter-name prefixes of the generator ("affine_mlp.",
    # "stats."); 0 freezes them.
    lr_scales: dict[str, float] = Field(default_factory=dict, description="Generator lr multipliers by "
                                        "parameter-name prefix (first match wins; 0 freezes).")
    critic_lr_scale: float = Field(1.0, gt=0, description="Critic lr = lr x this (the release: 1, one lr). A "
                                   "critic-only probe needed ~10x the generator's lr to learn a look in 2,000 steps.")
    decay_start: int | None = Field(None, description="Step at which lr starts decaying linearly to 0; None: half.")
    critic_steps_per_generator_step: int = Field(50, ge=1, description="Release: 50 critic steps per G step.")
    identity_weight: float = Field(1e3, description="Weight of MSE(G(x), x): output stays close to its input.")
    cycle_weight: float = Field(1e4, description="Weight of the cycle MSE (two-way).")
    # Deviation (opt-in): the release has no such term. A target from the pooled colours of both photo sets
    # (dpe_core.training.transport), unpaired like the rest of the two-way losses; see that module for why.
    transport_weight: float = Field(0.0, ge=0, description="two-way: weight of MSE(G_X(x), T(x)) + MSE(G_Y(y), "
                                    "T^-1(y)), T the colour transport (transport_kind) from the source photos to the "
                                    "references, estimated from the pixels of both sets pooled (up to 4 M a set; "
                                    "0: off, the release).")
    transport_kind: Literal["quantile", "affine"] = Field("quantile", description="two-way: per-channel quantile "
                                                          "curves, or the affine (Monge-Kantorovich) colour map.")
    # Deviation (opt-in): the generators start at that transport instead of at the identity: G_X's colour prior
    # (GeneratorConfig.colour_prior) is set to T, G_Y's to T^-1, once the photos are read; the U-Nets refine it.
    transport_init: bool = Field(False, description="two-way: set the generators' colour priors to the transport "
                                 "(T for G_X, T^-1 for G_Y; needs generator.colour_prior).")
    individual_bn: bool = Field(True, description="two-way: generated inputs of the cycle pass use their own BN "
                                "set (the paper's iBN); False: one shared set (the ablation).")
    content_weight: float = Field(1e3, description="one-way: weight of MSE(G(x), paired target).")
    adaptive_lambda: AdaptiveLambdaConfig = Field(default_factory=AdaptiveLambdaConfig)
    augment: bool = True
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast of the forward passes (weights and optimizer stay fp32); ~2x on CPUs "
        "with AVX512-BF16/AMX and on GPUs."
    )
    min_mse: float = Field(
        1e-10, gt=0, description="Supervised loss floor log10(MSE + min_mse): stops undamaged (identity) "
        "pairs from dominating the PSNR loss once they are reproduced to this precision."
    )
    # log_mse (the release's supervised loss, mean PSNR) weighs each pair by 1/MSE: with defects in both directions
    # the mild, ambiguous pairs (where doing nothing is best) dominate and the net settles on the identity
    # (measured: no gain over identity after 22,000 image-steps). mse weighs pairs by how much there is to fix.
    # rmse (mean per-image root MSE) sits between them: a pair's weight is 1/sqrt(MSE), so a 1-stop exposure error
    # (MSE ~0.06) pulls 1/8 as hard as a mild pair (MSE ~0.001) instead of 1/60 under log_mse (measured with
    # log_mse: v3 left a 1-stop under-exposure at 14 dB where autocontrast reaches 25).
    supervised_loss: Literal["log_mse", "mse", "rmse"] = Field("log_mse", description="Supervised objective.")
    # Batch statistics of 8 differently damaged photos normalise away part of what tells a dark photo from a
    # bright one, and differ from the running statistics used at inference (the 4 dB swings between
    # evaluations). From this iteration on, the generator's BN layers use (and keep) their running statistics.
    freeze_bn_after: int | None = Field(None, ge=0, description="Iteration after which BN uses running stats.")
    seed: int = 2018
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    init_from: str | None = Field(
        None, description="Model URI whose generator initialises G_X (fine-tuning); ignored when resuming."
    )
    checkpoint_url: str | None = Field(None, description="Folder for checkpoints (fsspec URL); None: no checkpoints.")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    eval_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    threads: int | None = Field(None, description="torch CPU threads; None leaves torch's default.")
    device: str = "auto"

    @model_validator(mode="after")
    def _check_data(self) -> TrainConfig:
        d = self.data
        if self.mode != "supervised" and self.image_size < 64:
            # Five stride-2 critic convs leave 1x1 at 32 px, where instance norm is undefined.
            raise ValueError(f"GAN modes need image_size >= 64 (critic), got {self.image_size}")
        if self.mode == "two-way" and (d.source_url is None) != (d.reference_url is None):
            raise ValueError("two-way training needs both data.source_url and data.reference_url")
        if self.transport_init and (self.mode != "two-way" or not self.generator.colour_prior):
            raise ValueError("transport_init needs mode 'two-way' and generator.colour_prior true (the generators' "
                             "colour priors are what it sets)")
        if self.mode != "two-way" and d.input_url is not None and d.target_url is None:
            raise ValueError(f"{self.mode} training with data.input_url needs data.target_url")
        return self

    def lr_at(self, step: int) -> float:
        """Learning rate for iteration `step`: constant, then linear decay to 0 at `steps`."""
        start = self.steps // 2 if self.decay_start is None else self.decay_start
        if step < start or self.steps <= start:
            return self.lr
        return self.lr * max(0.0, (self.steps - step) / (self.steps - start))
