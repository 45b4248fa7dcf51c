"""Enhancer options and the small stateless helpers of dpe_core.inference (device choice, strength, stage clock,
the CPU bf16 gate).

bf16 on CPUs (``EnhancerOptions.bf16``, env ``DPE_BF16``, ``dpe enhance --bf16``): where the CPU has native bf16
(AVX512-BF16 or AMX: oneDNN's bf16 convolutions run on it; measured on a 2-core AMD EPYC with AVX512-BF16: the
512-px forward ~1.5-2x faster than fp32), "auto" runs the first ``bf16_check_images`` working-size forwards in fp32
*and* under bf16 autocast, converts both to 8-bit outputs (what a user receives) and keeps bf16 only when every
one of them agrees with fp32 to at least ``bf16_min_psnr`` (45 dB); otherwise the Enhancer stays fp32 for good.
The images checked are the first real photos it enhances (their fp32 result is what is returned). "on" forces
bf16 autocast, "off" never uses it. The input's identity path (x + residual) stays fp32 either way.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dpe_core.guided import DEFAULT_EPS, DEFAULT_RADIUS, DEFAULT_STRIP_PIXELS, PixelSource
from dpe_core.inference_graph import ALIGN

BF16_MIN_PSNR = 45.0
BF16_ENV = "DPE_BF16"


class EnhancerOptions(BaseModel):
    """How an Enhancer runs (per instance; the mode is chosen per call)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    working_size: int | None = Field(None, ge=16, description="Net input square; None: the model's train_size.")
    batch_size: int = Field(4, ge=1, description="Images per forward at the working size (GPUs; CPUs run one at a "
                            "time, faster there).")
    domain: int = Field(0, ge=0, le=1, description="iBN set: 0 = real photos (always, for enhancement).")
    channels_last: bool = Field(True, description="oneDNN/cuDNN convs are faster on NHWC (CPU: ~5-10% here).")
    compile: bool = Field(False, description="torch.compile the net (CPU: ~1 min compile per process; since the "
                          "decoder writes its padded buffers in one pass, no faster than eager).")
    compile_apply: Literal["auto", "on", "off"] = Field(
        "auto", description="CPU full-resolution apply: 'auto' uses the fused C loop once warm_up() compiled it."
    )
    compile_min_pixels: int = Field(1_000_000, description="'auto': the fused kernel for photos from this size.")
    amp: bool | None = Field(None, description="Autocast bf16/fp16 on CUDA; None: on for CUDA (CPU: see bf16).")
    bf16: Literal["auto", "on", "off"] | None = Field(
        None,
        description="CPU bf16 autocast of the net. auto: on CPUs with native bf16 (AVX512-BF16, AMX), once the first "
        "images' 8-bit outputs agree with fp32 to bf16_min_psnr; None: $DPE_BF16, else auto.",
    )
    bf16_min_psnr: float = Field(BF16_MIN_PSNR, description="auto: PSNR (dB) bf16 must keep against fp32.")
    bf16_check_images: int = Field(2, ge=1, description="auto: images checked in both precisions before deciding.")
    threads: int | None = Field(
        None, ge=1, description="CPU threads (torch intra-op, strip pool); None: the cores this process may use."
    )
    guided_radius: int = Field(DEFAULT_RADIUS, ge=1, description="Window radius at the working size (px).")
    guided_eps: float = Field(DEFAULT_EPS, gt=0)
    strip_pixels: int = Field(DEFAULT_STRIP_PIXELS, ge=1024, description="Full-res pixels per strip.")
    tile_size: int = Field(1024, ge=ALIGN, description="Tiled mode: tile core side (rounded to 16).")
    tiled_max_side: int | None = Field(2048, ge=64, description="Tiled mode: long-side cap (the demo's 2048).")
    tiled_kernels: Literal["resize", "dilate"] = "resize"
    sync_timings: bool = Field(False, description="Synchronise CUDA at stage boundaries so last_timings are exact.")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def have_compiler() -> bool:
    """A C compiler for the fused apply loop (dpe_core.guided_native) is on PATH."""
    from dpe_core.guided_native import compiler

    return compiler() is not None


def cpu_has_native_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo, and oneDNN agrees)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_setting(option: str | None) -> str:
    """The bf16 mode in effect: the option when given, else $DPE_BF16 (auto/on/off, also 1/0/true/false), else
    'auto'. An unknown value raises ValueError naming the variable."""
    if option is not None:
        return option
    raw = os.environ.get(BF16_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw in ("on", "1", "true", "yes"):
        return "on"
    if raw in ("off", "0", "false", "no"):
        return "off"
    raise ValueError(f"{BF16_ENV}={raw!r}: expected auto, on or off")


def psnr_8bit(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two float images in [0,1] (any shape) after clipping and rounding both to 8 bits."""
    qa = (a.float().clamp(0, 1) * 255).round()
    qb = (b.float().clamp(0, 1) * 255).round()
    mse = float(((qa - qb) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


class Bf16Gate:
    """The auto decision: images checked so far, their PSNRs, and the verdict (None while checking)."""

    def __init__(self, mode: str, native: bool, min_psnr: float, images: int):
        self.mode, self.native, self.min_psnr, self.images = mode, native, min_psnr, images
        self.psnrs: list[float] = []
        self.active: bool | None = {"on": True, "off": False}.get(mode, None if native else False)

    @property
    def checking(self) -> bool:
        return self.active is None

    def record(self, fp32: torch.Tensor, bf16: torch.Tensor) -> None:
        """One batch [B,3,h,w] computed both ways: its per-image PSNRs; decides once enough images were seen."""
        for x, y in zip(fp32, bf16, strict=True):
            self.psnrs.append(psnr_8bit(x, y))
        if min(self.psnrs) < self.min_psnr:
            self.active = False
        elif len(self.psnrs) >= self.images:
            self.active = True

    def describe(self) -> dict[str, Any]:
        """{'mode', 'native', 'active', 'psnr_db' (the lowest checked), 'checked'} for logs and summaries."""
        return {"mode": self.mode, "native": self.native, "active": self.active,
                "psnr_db": min(self.psnrs) if self.psnrs else None, "checked": len(self.psnrs)}


def check_strength(strength: Any) -> float:
    """strength as a float in [0, 1]; anything else (out of range, NaN, not a number) raises ValueError."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(
            f"strength must be a number in [0, 1] (0: the original, 1: the full correction), got {strength!r}"
        )
    return value


class Clock:
    """Accumulates wall time per stage name (synchronising CUDA first when given a CUDA device)."""

    def __init__(self, sync_device: torch.device | None):
        self.sync = sync_device is not None and sync_device.type == "cuda"
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now


def pixel_dtype(src: PixelSource) -> torch.dtype:
    """The torch dtype of the strips src.read returns (what a compiled kernel is specialised on)."""
    d = src.data
    if isinstance(d, torch.Tensor):
        return d.dtype if d.dtype in (torch.uint8, torch.uint16) else torch.float32
    return {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}.get(d.dtype, torch.float32)



