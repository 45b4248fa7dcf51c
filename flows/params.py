"""Flow parameters: pydantic models with descriptions, bounds and enums (the Prefect UI renders them as forms).

No secrets here: storage credentials come from the environment (AWS_*, FSSPEC_* variables, fsspec config
files) or from a Prefect Secret block named by ``storage_block``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["full", "paper", "tiled"]
Device = Literal["auto", "cpu", "cuda"]
InputFormat = Literal["jpeg", "png", "tiff", "webp", "heic", "mpo"]
OutputFormat = Literal["same", "jpeg", "png", "tiff", "webp"]
TrainMode = Literal["two-way", "one-way", "supervised"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


def dpe_home() -> str:
    """Local state of the CLI (Prefect server DB, default registry, training work): $DPE_HOME or ~/.dpe."""
    return os.environ.get("DPE_HOME") or str(Path.home() / ".dpe")


def default_registry() -> str:
    """Model registry URL: $DPE_REGISTRY or <dpe home>/models."""
    return os.environ.get("DPE_REGISTRY") or str(Path(dpe_home()) / "models")


def _norm(url: str) -> str:
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    path = url[len("file://"):] if url.startswith("file://") else url
    return os.path.abspath(os.path.expanduser(path))


def _lexical_destination_check(source_url: str, destinations: list[tuple[str, str]]) -> None:
    """Refuse a destination that is the source, lies inside it or contains it, by the URLs alone ('..', '//',
    'file://', scheme case, s3/s3a); the flows and the CLI check again with real paths (symlinks, inodes)."""
    from dpe_core.io.places import DestinationError, check_destinations

    try:
        check_destinations(source_url, destinations, resolve=False)
    except DestinationError:
        raise
    except Exception:  # a URL fsspec cannot parse here (e.g. a protocol whose package is missing): compare strings
        for _what, url in destinations:
            src, dst = _norm(source_url), _norm(url)
            if src == dst or (src + "/").startswith(dst + "/") or (dst + "/").startswith(src + "/"):
                raise ValueError(f"dest_url {url} and source_url {source_url} must differ and neither may lie "
                                 f"inside the other") from None


def _lower_scheme(url: str) -> str:
    from dpe_core.io.places import normalize_url

    return normalize_url(url)


def is_url_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


# Shared fields as annotated types, so that each model can order its form (what to do first, where to run last).
DaskAddress = Annotated[str | None, Field(
    description="Address of a running Dask scheduler (tcp://host:8786). Empty: start a local cluster.",
    examples=["tcp://dask-scheduler:8786"])]
Workers = Annotated[int | None, Field(
    ge=1, le=256, description="Local cluster only: worker processes (default: one per GPU, else sized to cores "
                              "and memory).")]
TorchThreads = Annotated[int | None, Field(
    ge=1, le=256, description="torch threads per worker (default: cores / workers on a local cluster).")]
Bf16 = Literal["auto", "on", "off"]
DeviceField = Annotated[Device, Field(description="auto: GPU workers when the cluster has them, else CPU.")]
MinGpuWorkers = Annotated[int | None, Field(
    ge=0, le=4096, description="Wait for this many Dask workers declaring the resource GPU before planning "
                               "(default: dask config dpe.min-gpu-workers, else 0: no wait).")]
GpuWaitS = Annotated[float, Field(ge=0, le=86400, description="How long to wait for them (s), then fail.")]
DaskSecurity = Annotated[str | None, Field(
    description="TLS for a tls:// scheduler: path to a YAML/JSON file with Security keywords (tls_ca_file, "
                "tls_client_cert, tls_client_key) or a Dask config with distributed.comm.tls (docs/operations.md).")]
Include = Annotated[list[str], Field(description="Glob patterns on paths relative to the source ('*' crosses '/').")]
Exclude = Annotated[list[str], Field(description="Glob patterns to leave out.")]
Formats = Annotated[list[InputFormat], Field(min_length=1, description="Input formats to pick up (by extension).")]
IncludeHidden = Annotated[bool, Field(description="Also pick up hidden files (names starting with '.').")]
StorageBlock = Annotated[str | None, Field(
    description='Name of a Prefect Secret block with fsspec options (JSON per protocol, e.g. {"s3": {"key": ...}}).')]
DEFAULT_FORMATS: list[InputFormat] = ["jpeg", "png", "tiff", "webp", "heic", "mpo"]


class ClusterParams(BaseModel):
    """Where tasks run (every flow's parameters have these fields; dask_cluster() reads only them)."""

    model_config = ConfigDict(extra="forbid")

    dask_address: DaskAddress = None
    workers: Workers = None
    torch_threads: TorchThreads = None
    device: DeviceField = "auto"
    min_gpu_workers: MinGpuWorkers = None
    gpu_wait_s: GpuWaitS = 600.0
    dask_security: DaskSecurity = None


class EnhanceParams(BaseModel):
    """Bulk-enhance an archive: every photo under source_url -> the same relative path under dest_url."""

    model_config = ConfigDict(extra="forbid")

    source_url: str = Field(..., min_length=1, description="Folder or bucket prefix of originals (never written).",
                            examples=["s3://archive/originals", "/data/photos"])
    dest_url: str = Field(..., min_length=1, description="Where enhanced photos, the manifest and reports go.",
                          examples=["s3://archive/enhanced"])
    model: str = Field("default", min_length=1,
                       description="Model: a registry name (name or name:version), a bundled name, or a model URI.")
    registry_url: str | None = Field(None, description="Model registry (default $DPE_REGISTRY or ~/.dpe/models).")
    mode: Mode = Field("full", description="full: guided upsampling to full resolution; paper: the network at "
                                           "its working size only; tiled: the network on full-size tiles.")
    bf16: Bf16 | None = Field(None, description="CPU workers: bf16 of the net. auto: on CPUs with native bf16, "
                              "kept only while outputs stay within 45 dB of fp32; on; off. None: each worker's "
                              "$DPE_BF16, else auto. GPUs always use autocast.")
    strength: float = Field(1.0, ge=0, le=1, allow_inf_nan=False,
                            description="How much of the correction to apply: 0 keeps the original, 1 the full "
                                        "correction; in between blends the two (no retraining). A rerun with "
                                        "another strength redoes the outputs.")
    output_format: OutputFormat = Field("same", description="Output format; 'same' keeps the input's.")
    quality: int = Field(95, ge=50, le=100, description="JPEG/WebP quality of the outputs.")
    max_pixels: int = Field(120_000_000, ge=1_000_000, le=2_000_000_000,
                            description="Refuse photos with more pixels (decompression-bomb guard).")
    overwrite: bool = Field(False, description="Redo every photo even when its output is recorded as done.")
    shard_size: int | None = Field(None, ge=1, le=10_000,
                                   description="Photos per task (default: sized so each worker gets ~4 shards).")
    previews: int = Field(4, ge=0, le=16, description="Before/after thumbnails in the run's summary artifact.")
    decode_timeout_s: float = Field(120.0, ge=0, le=3600,
                                    description="Per-photo decode time limit (s): photos are decoded in a separate "
                                                "decoder process per worker, killed when it takes longer or crashes "
                                                "(that photo fails, the rest go on). 0: decode in the worker.")
    max_inflight_mb: int = Field(1024, ge=16, le=1_000_000,
                                 description="Memory per worker for photos read ahead and written behind the model "
                                             "(MiB of decoded pixels and file bytes); one photo always proceeds.")
    lock_wait_s: float = Field(0.0, ge=0, le=7 * 86400,
                               description="When another run holds the destination's lock: wait this long for it "
                                           "(s), then give up. 0: give up at once.")
    include: Include = ["*"]
    exclude: Exclude = []
    formats: Formats = DEFAULT_FORMATS
    include_hidden: IncludeHidden = False
    dask_address: DaskAddress = None
    workers: Workers = None
    torch_threads: TorchThreads = None
    device: DeviceField = "auto"
    min_gpu_workers: MinGpuWorkers = None
    gpu_wait_s: GpuWaitS = 600.0
    dask_security: DaskSecurity = None
    storage_block: StorageBlock = None

    @field_validator("source_url", "dest_url")
    @classmethod
    def _scheme_case(cls, value: str) -> str:
        return _lower_scheme(value)

    @model_validator(mode="after")
    def _check(self) -> EnhanceParams:
        _lexical_destination_check(self.source_url, [("destination", self.dest_url)])
        return self


class IngestParams(BaseModel):
    """Validate a folder of photos into a dataset manifest; optionally write small training copies."""

    model_config = ConfigDict(extra="forbid")

    source_url: str = Field(..., min_length=1, description="Folder or bucket prefix of photos (read only).")
    dest_url: str = Field(..., min_length=1, description="Dataset folder: manifest.jsonl, summary.json, copies/.")
    copies: bool = Field(False, description="Write training copies (long side = copy_size) under dest_url/copies.")
    copy_size: int = Field(512, ge=32, le=4096, description="Long side of training copies (px).")
    copy_format: Literal["jpeg", "png"] = Field("jpeg", description="Format of training copies.")
    min_side: int = Field(32, ge=1, le=10_000, description="Reject photos whose short side is smaller (px).")
    max_pixels: int = Field(120_000_000, ge=1_000_000, le=2_000_000_000, description="Reject larger photos.")
    shard_size: int | None = Field(None, ge=1, le=10_000, description="Photos per task.")
    include: Include = ["*"]
    exclude: Exclude = []
    formats: Formats = DEFAULT_FORMATS
    include_hidden: IncludeHidden = False
    dask_address: DaskAddress = None
    workers: Workers = None
    torch_threads: TorchThreads = None
    device: DeviceField = "auto"
    min_gpu_workers: MinGpuWorkers = None
    gpu_wait_s: GpuWaitS = 600.0
    dask_security: DaskSecurity = None
    storage_block: StorageBlock = None

    @field_validator("source_url", "dest_url")
    @classmethod
    def _scheme_case(cls, value: str) -> str:
        return _lower_scheme(value)

    @model_validator(mode="after")
    def _check(self) -> IngestParams:
        _lexical_destination_check(self.source_url, self.destinations())
        return self

    def destinations(self) -> list[tuple[str, str]]:
        """(what, url) of every folder this run writes: the dataset, and its training copies when made."""
        out = [("destination", self.dest_url)]
        if self.copies:
            out.append(("training copies folder", self.dest_url.rstrip("/") + "/copies"))
        return out


class TrainParams(BaseModel):
    """Train a named style and publish it to the model registry.

    two-way (unpaired): source_url (photos to enhance) + reference_url (the look to imitate).
    one-way / supervised (paired): input_url + target_url (same relative names), or degrade_url (real photos
    whose synthetic degradations become the inputs).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=NAME_PATTERN, description="Style name in the registry (lower case).")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                                description="Version to publish (default: next integer).")
    mode: TrainMode = Field("two-way", description="two-way: unpaired GAN; one-way: paired GAN; supervised: "
                                                   "generator only (PSNR loss).")
    source_url: str | None = Field(None, description="two-way: photos to enhance (domain X).")
    reference_url: str | None = Field(None, description="two-way: reference photos of the target style (domain Y).")
    input_url: str | None = Field(None, description="Paired modes: input photos.")
    target_url: str | None = Field(None, description="Paired modes: target photos, same relative names.")
    degrade_url: str | None = Field(None, description="Paired modes: photos to degrade synthetically into pairs.")
    degrade_strength: float = Field(1.0, ge=0, le=2, description="degrade_url: strength of synthetic degradations.")
    holdout: int = Field(0, ge=0, le=10_000, description="Paired modes: photos kept out of training for evaluation.")
    image_size: int = Field(512, ge=32, le=1024, description="Training square side (px); the paper used 512.")
    batch_size: int = Field(3, ge=1, le=64, description="Photos per step; the paper used 3.")
    steps: int = Field(1000, ge=1, le=10_000_000, description="Iterations (GAN modes: critic steps).")
    critic_steps_per_generator_step: int = Field(50, ge=1, le=1000, description="Release: 50.")
    lr: float = Field(1e-5, gt=0, le=1.0, description="Adam learning rate (constant, then linear decay to 0).")
    checkpoint_every: int = Field(500, ge=1, description="Iterations between checkpoints.")
    checkpoint_url: str | None = Field(None, description="Checkpoint folder (default <work_url>/<name>/checkpoints).")
    work_url: str | None = Field(None, description="Training work folder (default ~/.dpe/training).")
    registry_url: str | None = Field(None, description="Model registry (default $DPE_REGISTRY or ~/.dpe/models).")
    prepare_data: bool = Field(True, description="Run ingest first: validate the photos, train on small copies "
                                                 "of the valid ones (skips corrupt files).")
    stop_after: int | None = Field(None, ge=1, description="End this run after this many iterations (time-boxed "
                                                          "runs); the next run resumes from the last checkpoint.")
    overrides: dict = Field({}, description="Extra TrainConfig fields (advanced; validated by dpe_core).")
    dask_address: DaskAddress = None
    workers: Workers = None
    torch_threads: TorchThreads = None
    device: DeviceField = "auto"
    min_gpu_workers: MinGpuWorkers = None
    gpu_wait_s: GpuWaitS = 600.0
    dask_security: DaskSecurity = None
    storage_block: StorageBlock = None

    @field_validator("overrides")
    @classmethod
    def _no_data_in_overrides(cls, value: dict) -> dict:
        bad = sorted(set(value) & {"mode", "data", "image_size", "batch_size", "steps", "checkpoint_url"})
        if bad:
            raise ValueError(f"set {', '.join(bad)} with the parameters of the same name, not in overrides")
        return value

    @model_validator(mode="after")
    def _check_data(self) -> TrainParams:
        if self.mode == "two-way":
            if not (self.source_url and self.reference_url):
                raise ValueError("two-way training needs source_url and reference_url")
        elif not (self.degrade_url or (self.input_url and self.target_url)):
            raise ValueError(f"{self.mode} training needs input_url + target_url, or degrade_url")
        return self
