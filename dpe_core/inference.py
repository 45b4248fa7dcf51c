"""Enhancer: model file -> enhanced photos at any resolution, one at a time or in batches.

    enhancer = Enhancer.from_pretrained("default")          # bundled name, or any fsspec URI of a model file
    out = enhancer.enhance(image, mode="full")               # same kind, size and dtype as `image`
    outs = enhancer.enhance_batch([a, b, c], mode="full")
    out = enhancer.enhance(image, strength=0.5)              # half the correction (0: the original, 1: all of it)

Images: numpy HxWx3 / HxWx4 / HxW (uint8, uint16, float32/float64 in [0,1]), PIL images, torch tensors [3,H,W] or
[B,3,H,W] (float in [0,1]), Photo objects (anything with ``.pixels`` and ``.with_pixels``; alpha rides along
untouched), or a str / PathLike path or URL (read with dpe_core.io.read_photo; returns a Photo). The result has
the input's kind, dtype and (except mode="paper") size; alpha is never enhanced and is reattached bit-exactly.

Modes and their trade-offs (the network is trained at 512 px; photos are 12-100 MP):

``full`` (default): guided upsampling. The net runs once at the working size (512 px long side, symmetric-padded
    to 512x512 like training); a local affine colour transform (3x4 per pixel, guided-filter regression with the
    colour guide, radius 2 px at 512, eps 1e-4) is fitted from the 512-px input to the 512-px output, upsampled
    bilinearly and applied to the full-resolution pixels in strips (dpe_core.guided). Output at the input's exact
    size; edges, texture and noise are the original's, colour and tone are the net's. Cost: one 512-px forward plus
    a few operations per pixel, memory bounded (strips) at any size. What it cannot carry: changes that are not
    locally affine in colour at a 2-5 px scale of the 512 image (local contrast/sharpening the net might add;
    colour changes within a window that the 3 input channels cannot predict).
``paper``: the release's protocol: resize the long side to 512, symmetric-pad bottom/right to 512x512, run,
    crop. Output at 512 px long side. The reference for what the network itself does; not a full-size output.
``tiled``: the original demo, kept as the fidelity reference: the global feature is computed once at 512; the
    local path runs on the photo at full size (long side capped at ``tiled_max_side`` = 2048 like the demo;
    ``None`` runs at full size) in tiles of ``tile_size`` with a receptive-field-sized margin (tile borders cropped;
    the result equals a whole-image forward), with every k x k kernel enlarged to r*(k-1)+1 taps for
    r = round(max(h, w)/512) (``tiled_kernels="resize"``: the demo's resized kernels; ``"dilate"``: dilated kernels,
    r^2 cheaper). When the photo is larger than the cap, the enhancement (output - input at the capped size) is
    upsampled bilinearly and added to the full-resolution photo, so the output keeps the input's size. Cost grows
    like (pixels at the capped size) x r^2 (r^4 with resized kernels): hundreds of 512-px forwards.

Strength (``strength`` in [0, 1], default 1, per call): blends the correction with the original, so a user can dial
the effect down without retraining: output = s * enhanced + (1 - s) * original, computed before clipping and
rounding (s = 0 gives the input back, to 8/16-bit rounding; s = 1 is the full correction, unchanged). ``full``
folds it into the fitted coefficients (A' = s A + (1 - s) I, b' = s b; dpe_core.guided.blend_with_identity), so
the full-resolution apply is one pass at the same cost; ``paper`` blends the net's output with the working-size
input; ``tiled`` blends its output with its input at the tiled size (so the capped path carries s times the
enhancement to full size). Anything outside [0, 1] (or NaN) raises ValueError.

Performance (measured numbers: benchmarks/enhance_speed.py):
- the net runs as a FoldedGenerator (batch norm and SELU scale folded into the next conv, exact), under
  ``torch.inference_mode``, batched (``batch_size``) on GPUs and one image at a time on CPUs (faster there:
  benchmarks/model_speed.py), channels_last (default; ``channels_last=False`` to disable), autocast bf16 (fp16
  where bf16 is unsupported) on CUDA (``amp``), ``torch.compile`` when ``compile=True`` (off by default: on CPU it
  costs ~1 min of compilation per process and is no faster than the eager folded net);
- the full-resolution stages of ``full`` (area downscale, guided fit, apply) run on CPU as strips handed one at a
  time to a pool of single-threaded Python threads (dpe_core.threads): when another process keeps a core busy, that
  core costs its share instead of a wait at every OpenMP barrier (measured on 2 cores with one taken: a 12 MP apply
  2.8-4.5 s with torch's 2 threads, 0.9-1.2 s in strips). Results do not depend on the number of threads;
- the apply is one fused C loop when compiled (``compile_apply``; dpe_core.guided_native: reads the photo's array
  and writes the output array directly, any strides), a few large eager kernels otherwise. On CPU the fused loop
  is ~10x cheaper per pixel; compiling it takes about a second once per machine (cached on disk): ``warm_up()``
  does it (workers call it at start-up), and "auto" uses it only once loaded, never compiling in the middle of a
  call; "on" compiles at first use, "off" never. GPUs run the eager kernels;
- the working-size forward also runs on one pool thread (one intra-op thread): with a core taken, a 2-thread
  forward waits at every layer; on an idle machine a large net pays up to 2x for it (the bundled model: ~20 ms);
- ``threads`` sets torch's intra-op threads (process-wide) and the strip pool's size; None: the cores this process
  may really use (affinity mask, cgroup CPU quota), and never more than torch's default;
- ``bf16`` (CPU; env DPE_BF16; ``dpe enhance --bf16``): bf16 autocast of the net on CPUs with native bf16, by
  default ("auto") only once the first images' 8-bit outputs agree with fp32 to 45 dB (dpe_core.inference_options;
  ``enhancer.bf16.describe()`` says what was decided); "off" keeps fp32, "on" forces bf16.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import torch

from dpe_core.guided import (
    EAGER,
    PixelSource,
    StripKernel,
    apply_affine,
    area_downscale,
    blend_with_identity,
    fit_affine,
    working_size,
)
from dpe_core.inference_graph import ALIGN, FoldedGenerator, enlarged_rate, tile_margin
from dpe_core.inference_inputs import Job, array_job, pil_job, tensor_job, to_storage
from dpe_core.inference_options import (
    Bf16Gate,
    Clock,
    EnhancerOptions,
    bf16_setting,
    check_strength,
    cpu_has_native_bf16,
    have_compiler,
    pick_device,
    pixel_dtype,
)
from dpe_core.nn.generator import GlobalUNetGenerator, input_statistics, statistics_if_needed
from dpe_core.nn.layers import symmetric_pad
from dpe_core.nn.modelfile import ModelFileError, ModelInfo, load_model
from dpe_core.threads import StripPool, available_cpus, strip_pool

log = logging.getLogger(__name__)

Mode = Literal["full", "paper", "tiled"]
MODES: tuple[str, ...] = ("full", "paper", "tiled")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar", ".zip", ".h5", ".npz")


class Enhancer:
    """Enhance photos with a generator at any resolution (see the module docstring for modes and options).

    Per call: ``mode`` and ``strength`` in [0, 1] (default 1), the share of the correction applied: the output is
    ``strength * enhanced + (1 - strength) * original`` (0 returns the input, to 8/16-bit rounding); ``full`` folds
    it into the guided coefficients, so the full-resolution apply is still one pass. Invalid values raise ValueError.
    """

    def __init__(
        self,
        generator: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        info: ModelInfo | None = None,
        device: str | torch.device = "auto",
        **options: Any,
    ):
        self.options = opts = EnhancerOptions(**options)
        self.device = pick_device(device)
        self.info = info
        # Threads from the cores this process may really use (affinity, cgroup quota): torch's default counts
        # the machine's cores, and a thread more than the quota stalls every parallel region.
        self.threads = opts.threads or available_cpus()
        if opts.threads or torch.get_num_threads() > self.threads:
            torch.set_num_threads(self.threads)
        # Memory-bound full-resolution stages (downscale, fit, apply) run as strips on single-threaded pool
        # threads: a core another process keeps busy then costs its share, not a wait at every OpenMP barrier.
        self.pool: StripPool | None = strip_pool(self.threads) if self.device.type == "cpu" else None
        on_cuda = self.device.type == "cuda"
        self.channels_last = opts.channels_last
        self.amp_dtype: torch.dtype | None = None
        if on_cuda and opts.amp is not False:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # CPU bf16 (see dpe_core.inference_options): forced, off, or decided on the first images ("auto").
        on_cpu = self.device.type == "cpu"
        mode = bf16_setting(opts.bf16) if on_cpu else "off"
        self.bf16 = Bf16Gate(mode, on_cpu and cpu_has_native_bf16(), opts.bf16_min_psnr, opts.bf16_check_images)
        if self.bf16.active:
            self.amp_dtype = torch.bfloat16
        self.generator = generator if isinstance(generator, GlobalUNetGenerator) else None
        if self.generator is not None:
            self.generator.eval()
            train_size = self.generator.config.train_size
            net: Any = FoldedGenerator(self.generator, opts.domain, channels_last=self.channels_last).to(self.device)
        else:  # any callable x [B,3,S,S] -> [B,3,S,S]: paper and full modes only
            train_size = 512
            net = generator.to(self.device).eval() if isinstance(generator, torch.nn.Module) else generator
        self.working = opts.working_size or train_size
        self.train_size = train_size
        self.net = net
        self._forward = torch.compile(net, options={"freezing": True} if not on_cuda else None) if opts.compile else net
        self._enlarged: dict[int, FoldedGenerator] = {}
        self._apply_kernel: StripKernel | None = None
        self._apply_compile_failed = False
        self.last_timings: dict[str, float] = {}  # seconds per stage of the last enhance/enhance_batch call

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        uri: str = "default",
        device: str | torch.device = "auto",
        *,
        storage_options: dict | None = None,
        **options: Any,
    ) -> Enhancer:
        """Load a model file (safetensors + JSON sidecar; any fsspec URI or a bundled name such as "default").

        Anything else (pickled checkpoints, wrong shapes, missing sidecar, garbage) raises ModelFileError naming
        the file. ``options``: see EnhancerOptions.
        """
        text = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
        if text.lower().endswith(PICKLE_SUFFIXES):
            raise ModelFileError(
                f"model {text!r}: pickled/archived checkpoints are refused (never unpickled); "
                "export a safetensors model with dpe_core.nn.save_model"
            )
        try:
            generator, info = load_model(text, map_location="cpu", **(storage_options or {}))
        except ModelFileError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"model {text!r}: cannot be loaded: {exc}") from exc
        return cls(generator, info, device=device, **options)

    # ------------------------------------------------------------------ public API
    def enhance(self, image: Any, mode: Mode = "full", strength: float = 1.0) -> Any:
        """Enhance one image; returns the same kind (and size, except mode="paper") as given.

        A [B,3,H,W] tensor is a batch and returns [B,3,H,W]. ``strength`` in [0, 1]: how much of the correction
        to apply (0: the original, 1: all of it; see the module docstring).
        """
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            outs = self.enhance_batch(list(image), mode, strength)
            return torch.stack(outs)
        return self.enhance_batch([image], mode, strength)[0]

    def enhance_batch(self, images: Sequence[Any], mode: Mode = "full", strength: float = 1.0) -> list[Any]:
        """Enhance several images; the working-size forwards are batched (batch_size at a time; one by one on CPUs)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        strength = check_strength(strength)
        clock = Clock(self.device if self.options.sync_timings else None)
        jobs = [self._job(image) for image in images]
        clock.lap("read")
        with torch.inference_mode():
            for job in jobs:
                h, w = working_size(job.src.height, job.src.width, self.working)
                job.low = area_downscale(job.src, (h, w), self.device, self.options.strip_pixels, self.pool)
            clock.lap("downscale")
            self._run_working(jobs, global_only=(mode == "tiled"))
            clock.lap("network" if mode != "tiled" else "global feature")
            results = []
            for job in jobs:
                results.append(job.finish(self._finish(job, mode, clock, strength)))
                clock.lap("apply")
        self.last_timings = clock.laps
        return results

    # ------------------------------------------------------------------ stages
    def _run_working(self, jobs: list[Job], global_only: bool) -> None:
        """Pad every working-size image to the working square, run the net in batches, crop."""
        s = self.working
        bs = self.options.batch_size
        for start in range(0, len(jobs), bs):
            chunk = jobs[start : start + bs]
            batch = torch.stack([symmetric_pad(j.low, (0, s - j.low.shape[2], 0, s - j.low.shape[1])) for j in chunk])
            if global_only:
                if not isinstance(self.net, FoldedGenerator):
                    raise ValueError("mode='tiled' needs a GlobalUNetGenerator (the global/local split)")
                with self._autocast():
                    g = self.net.global_feature(batch).float()
                # The global colour affine's and tone curve's inputs, from the whole photo (tiles would each see
                # their own).
                prior = self.net.colour_prior
                seen = batch if prior is None else prior(batch)  # what forward reads
                stats = statistics_if_needed(seen, None, self.net.affine_mlp, self.net.post_curve,
                                             stretch=self.net.input_stretch)
                post = None
                if self.net.post_curve is not None:
                    with self._autocast():
                        pre_curve = self.net(batch, stats=stats, post_curve=False).float()
                    post = input_statistics(pre_curve.clamp(0, 1))  # padded, as the untiled forward sees it
                for i, (j, gv) in enumerate(zip(chunk, g, strict=True)):
                    j.global_vector, j.global_stats = gv, (stats[i] if stats is not None else None)
                    j.post_stats = post[i] if post is not None else None
                continue
            out = self._on_pool(partial(self._net_forward, batch)).float()
            for j, o in zip(chunk, out, strict=True):
                j.net_out = o[:, : j.low.shape[1], : j.low.shape[2]]

    def _net_forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu" and batch.shape[0] > 1:
            # One image at a time on CPUs: a 512 px batch of 4 ran at 71% of the fp32 matmul peak where single
            # images ran at 85% (benchmarks/model_speed.py; the activations of 4 no longer fit the caches).
            return torch.cat([self._net_forward(image[None]) for image in batch])
        if self.bf16.checking:  # "auto": these images both ways; bf16 from here on only if they agree (8-bit)
            out = self._forward(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                self.bf16.record(out, self._forward(batch).float())
            if self.bf16.active is not None:
                self.amp_dtype = torch.bfloat16 if self.bf16.active else None
                log.info("bf16 autocast %s: %s", "on" if self.bf16.active else "off", self.bf16.describe())
            return out
        with self._autocast():
            return self._forward(batch)

    def _finish(self, job: Job, mode: str, clock: Clock, strength: float = 1.0) -> Any:
        if mode == "paper":
            out = job.net_out if strength == 1.0 else torch.lerp(job.low, job.net_out, strength)
            return to_storage(out, job.src)
        if mode == "full":
            coeffs = self._on_pool(
                lambda: fit_affine(job.low[None], job.net_out[None], self._radius(), self.options.guided_eps)[0]
            )
            # Strength folded into the coefficients: the full-size apply stays one pass at the same cost.
            coeffs = blend_with_identity(coeffs, strength)
            clock.lap("fit")
            return self._apply(job.src, coeffs)
        return self._tiled(job, clock, strength)

    def _radius(self) -> int:
        return max(1, round(self.options.guided_radius * self.working / 512))

    def _tiled(self, job: Job, clock: Clock, strength: float = 1.0) -> Any:
        opts, src = self.options, job.src
        big_h, big_w = src.height, src.width
        cap = opts.tiled_max_side
        if cap is not None and max(big_h, big_w) > cap:
            ht, wt = working_size(big_h, big_w, cap)
            x = area_downscale(src, (ht, wt), self.device, opts.strip_pixels, self.pool)
        else:
            ht, wt = big_h, big_w
            x = (src.read_float(0, big_h, self.device) / src.max_value).permute(2, 0, 1).contiguous()
        rate = enlarged_rate(ht, wt, self.train_size)
        net = self._enlarged_net(rate)
        margin = tile_margin(rate)
        core = ALIGN * max(1, opts.tile_size // ALIGN)
        if ht * wt <= (core + 2 * margin) ** 2:  # the whole image fits in one tile's budget
            ys, xs = [(0, ht)], [(0, wt)]
        else:
            ys = [(y, min(ht, y + core)) for y in range(0, ht, core)]
            xs = [(x0, min(wt, x0 + core)) for x0 in range(0, wt, core)]
        out = torch.empty_like(x)
        g = job.global_vector[None]
        stats = job.global_stats[None] if job.global_stats is not None else None
        post_stats = job.post_stats[None] if job.post_stats is not None else None
        for y0, y1 in ys:
            for x0, x1 in xs:
                ey0, ey1 = max(0, y0 - margin), min(ht, y1 + margin)
                ex0, ex1 = max(0, x0 - margin), min(wt, x1 + margin)
                with self._autocast():
                    res = net(x[None, :, ey0:ey1, ex0:ex1], global_vector=g, stats=stats, post_stats=post_stats)
                out[:, y0:y1, x0:x1] = res[0, :, y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0].float()
        clock.lap("tiles")
        if strength != 1.0:
            out = torch.lerp(x, out, strength)
        if (ht, wt) == (big_h, big_w):
            return to_storage(out, src)
        # Capped: add the bilinearly upsampled enhancement (out - x at the capped size) to the full-size photo,
        # as an affine field with A = identity and b = the enhancement.
        coeffs = torch.zeros((12, ht, wt), dtype=torch.float32, device=self.device)
        for c in range(3):
            coeffs[5 * c] = 1.0
        coeffs[3::4] = out - x
        return self._apply(src, coeffs)

    def _enlarged_net(self, rate: int) -> FoldedGenerator:
        if rate not in self._enlarged:
            if self.generator is None:
                raise ValueError("mode='tiled' needs a GlobalUNetGenerator (kernel enlargement)")
            self._enlarged[rate] = FoldedGenerator(
                self.generator,
                self.options.domain,
                rate=rate,
                kernels=self.options.tiled_kernels,
                channels_last=self.channels_last,
            ).to(self.device)
        return self._enlarged[rate]

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _on_pool(self, fn: Callable[[], Any]) -> Any:
        """fn() on one single-threaded pool thread on CPU (small work: an OpenMP team would mostly wait)."""
        return self.pool.call(fn) if self.pool is not None else fn()

    def _apply(self, src: PixelSource, coeffs: torch.Tensor) -> Any:
        kernel = self._kernel_for(src)
        try:
            return apply_affine(src, coeffs, self.device, self.options.strip_pixels, kernel, self.pool)
        except Exception as exc:
            if kernel is EAGER:
                raise
            # No working compiler, an inductor limitation...: the eager kernel computes the same (to rounding).
            log.warning("compiled apply kernel unavailable (%s: %s); using the eager one", type(exc).__name__, exc)
            self._apply_compile_failed = True
            return apply_affine(src, coeffs, self.device, self.options.strip_pixels, EAGER, self.pool)

    def _kernel_for(self, src: PixelSource) -> StripKernel:
        """The per-strip apply: on CPU the fused (compiled) kernel when it is ready, eager otherwise.

        'auto' never compiles during a call (warm_up() does, ahead of the photos): a compilation takes seconds
        and would stall whichever photo triggered it. 'on' compiles at first use when warm_up() did not."""
        mode = self.options.compile_apply
        if mode == "off" or self._apply_compile_failed or self.device.type != "cpu":
            return EAGER
        if mode == "auto":
            kernel = self._apply_kernel
            if kernel is None or not kernel.ready(pixel_dtype(src)):
                return EAGER
            return kernel if src.height * src.width >= self.options.compile_min_pixels else EAGER
        if self._apply_kernel is None:
            self._apply_kernel = StripKernel(compiled=True)
        return self._apply_kernel

    def warm_up(self) -> dict[str, float]:
        """Run once before the photos: the first forward, and (CPU, compile_apply 'auto' or 'on', a C++ compiler
        present) the compilation of the fused apply kernel for 8-bit photos. Returns seconds per step.

        Long-running workers call it at start-up (tasks/models.py), so no user's photo waits for a compiler."""
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        # 300 x 700: several strips of several rows each, so the dynamic-shape kernel compiled here is the one
        # full-size photos use (a one-row strip or one-strip photo would specialise it).
        sample = (rng.random((300, 700, 3)) * 255).astype(np.uint8)
        self.enhance(sample[:64, :96].copy(), "paper")
        seconds["forward"] = time.perf_counter() - start
        if (
            self.device.type == "cpu"
            and self.options.compile_apply != "off"
            and not self._apply_compile_failed
            and have_compiler()
        ):
            start = time.perf_counter()
            if self._apply_kernel is None:
                self._apply_kernel = StripKernel(compiled=True)
            coeffs = torch.zeros((12, 64, 150))
            coeffs[[0, 5, 10]] = 1.0
            try:  # compile (about a second; cached on disk per machine), then one run through the fused loop
                self._apply_kernel.prepare()
                with torch.inference_mode():
                    apply_affine(PixelSource(sample), coeffs, self.device, 70_000, self._apply_kernel, self.pool)
            except Exception as exc:
                log.warning("compiled apply kernel unavailable (%s: %s); using the eager one", type(exc).__name__, exc)
                self._apply_compile_failed = True
            seconds["compile_apply"] = time.perf_counter() - start
        return seconds

    def __repr__(self) -> str:
        name = f"{self.info.name}@{self.info.version}" if self.info else type(self.net).__name__
        return f"Enhancer({name}, device={self.device}, working={self.working}, batch={self.options.batch_size})"

    # ------------------------------------------------------------------ input kinds
    def _job(self, image: Any) -> Job:
        if isinstance(image, (str, os.PathLike)):
            from dpe_core.io import read_photo  # lazy: the core path does not need the photo IO stack

            image = read_photo(os.fspath(image))
        if hasattr(image, "pixels") and hasattr(image, "with_pixels"):
            photo = image
            return Job(PixelSource(np.asarray(photo.pixels)), lambda out: photo.with_pixels(out))
        if isinstance(image, torch.Tensor):
            return tensor_job(image)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            return pil_job(image)
        if isinstance(image, np.ndarray):
            return array_job(image)
        raise TypeError(
            f"cannot enhance {type(image).__name__}: expected a numpy array, PIL image, tensor, Photo, or a path/URL"
        )


__all__ = ["MODES", "Enhancer", "EnhancerOptions", "Mode", "ModelFileError", "check_strength", "pick_device"]
