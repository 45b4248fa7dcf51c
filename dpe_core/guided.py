"""Guided upsampling: carry an enhancement computed at low resolution to the full-resolution photo.

The network runs at its working size (512 px long side). Its output is summarised as a local affine colour
transform (a guided-filter-style regression, He et al. 2010, with a colour guide): at every low-resolution pixel a
3x3 matrix A and offset b such that ``output ~ A @ input + b`` over a (2r+1)^2 window, ridge-regularised by eps.
The 12 coefficient planes are smooth; they are upsampled bilinearly to the full size and applied to the original
full-resolution pixels, so edges, texture and noise come from the original while colour and tone come from the
network. Calibration (DESIGN.md): r = 2 px at 512, eps = 1e-4 reproduces a known smooth local transform at ~43 dB
on an 18 MP photo where bilinear upscaling of the 512-px output reaches ~33 dB.

Everything that touches full-resolution pixels works in horizontal strips, so memory stays bounded (a few
hundred kB per strip plus the input and output arrays) whatever the photo's size:

- ``area_downscale``: exact area (box) resampling to the working size, rows by a small banded matmul per strip,
  columns by a cumulative sum; the same geometry as the bilinear upsampling below (pixel centres at i + 0.5);
- ``apply_affine``: per strip, the coefficients are interpolated vertically at low width, then bilinearly to the
  full width (one interpolate kernel), then applied with three fused multiply-adds per channel. The input is
  converted once per strip from its storage type (uint8/uint16/float32, HWC), the input and output scales and
  the rounding offset are folded into the coefficients, and the result is written straight into the output
  array of the input's dtype. On CPU the fused C loop (dpe_core.guided_native, ``StripKernel(compiled=True)``)
  does all of it in one pass from the source array into the output array, with no strip copies. 8-bit outputs
  are the RGB view of an RGBX buffer (dpe_core.rgbx_view), which Pillow encodes without a copy.

Shapes: images are [3,H,W] (or numpy HxWx3), coefficients [12,h,w] with plane 4*c + k multiplying input channel k
for output channel c (k = 3: the offset b_c).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dpe_core.rgbx_view import recycled_empty, rgbx_base
from dpe_core.threads import StripPool

DEFAULT_RADIUS = 2
DEFAULT_EPS = 1e-4
DEFAULT_STRIP_PIXELS = 1 << 17  # ~128k full-resolution pixels per strip: 12 coefficient planes ~ 6 MB


def working_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side equal to long_side and the aspect ratio kept (each at least 1)."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class PixelSource:
    """Read-only view of full-resolution pixels: numpy HxWx3 (uint8/uint16/float32/float64) or torch [3,H,W].

    ``read(y0, y1, device)`` returns rows y0:y1 as an [S,W,3] tensor in storage units and storage dtype (uint8,
    uint16, float32) on device, without a layout change; ``max_value`` is the unit's white (255, 65535 or 1).
    """

    data: np.ndarray | torch.Tensor

    def __post_init__(self):
        d = self.data
        if isinstance(d, torch.Tensor):
            if d.ndim != 3 or d.shape[0] != 3:
                raise ValueError(f"expected a [3,H,W] tensor, got {tuple(d.shape)}")
            self.height, self.width = int(d.shape[1]), int(d.shape[2])
            self.max_value = {torch.uint8: 255.0, torch.uint16: 65535.0}.get(d.dtype, 1.0)
        else:
            if d.ndim != 3 or d.shape[2] != 3:
                raise ValueError(f"expected an HxWx3 array, got shape {d.shape}")
            if d.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
                raise ValueError(f"pixels must be uint8, uint16 or float, got {d.dtype}")
            self.height, self.width = int(d.shape[0]), int(d.shape[1])
            self.max_value = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(d.dtype, 1.0)

    @property
    def is_integer(self) -> bool:
        return self.max_value > 1.0

    def read(self, y0: int, y1: int, device: torch.device) -> torch.Tensor:
        d = self.data
        if isinstance(d, torch.Tensor):
            rows = d[:, y0:y1].permute(1, 2, 0)
            return rows.to(device) if rows.dtype in (torch.uint8, torch.uint16) else rows.to(device, torch.float32)
        rows = d[y0:y1]
        if rows.dtype == np.float64 or not rows.flags.writeable:  # torch wants writable memory: copy the strip
            rows = rows.astype(np.float32 if rows.dtype == np.float64 else rows.dtype)
        return torch.from_numpy(np.ascontiguousarray(rows)).to(device, non_blocking=True)

    def read_float(self, y0: int, y1: int, device: torch.device) -> torch.Tensor:
        """Rows y0:y1 as float32 [S,W,3] in storage units."""
        return self.read(y0, y1, device).to(torch.float32)


class PixelSink:
    """Where apply_affine writes: numpy HxWx3 of the source's dtype (floats: float32; uint8: the [..., :3] view of
    an HxWx4 buffer) or a torch [3,H,W] float32."""

    def __init__(self, like: PixelSource):
        d = like.data
        self.x_free = False  # data is the RGB view of an RGBX buffer whose 4th byte is ours to write
        if isinstance(d, torch.Tensor):
            self.data = torch.empty((3, like.height, like.width), dtype=torch.float32, device=d.device)
            self.torch_dtype = torch.float32
        else:
            dtype = d.dtype if d.dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
            if dtype == np.uint8:  # the RGB view of an RGBX buffer: Pillow encodes it without a copy (io/rgbx.py)
                self.data = recycled_empty((like.height, like.width, 4))[..., :3]
                self.x_free = True
            else:
                self.data = np.empty((like.height, like.width, 3), dtype=dtype)
            self.torch_dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}.get(
                dtype, torch.float32
            )

    def write(self, y0: int, y1: int, values: torch.Tensor) -> None:
        """values: [S,W,3] of torch_dtype (integers already rounded) or float32 (converted here by truncation)."""
        if isinstance(self.data, torch.Tensor):
            self.data[:, y0:y1].copy_(values.permute(2, 0, 1))
            return
        if values.dtype != self.torch_dtype:
            values = values.to(self.torch_dtype)  # float -> int truncates: callers fold a +0.5 into the offsets
        torch.from_numpy(self.data[y0:y1]).copy_(values)


def _area_matrix(n_in: int, n_out: int, start: int, stop: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
    """(first output index, weights [n, stop-start]) of exact area resampling n_in -> n_out for inputs start:stop."""
    scale = n_in / n_out
    lo = int(math.floor(start / scale))
    hi = min(n_out - 1, int(math.ceil(stop / scale)) - 1)
    out_idx = torch.arange(lo, hi + 1, dtype=torch.float64)[:, None]
    in_idx = torch.arange(start, stop, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(in_idx + 1, (out_idx + 1) * scale) - torch.maximum(in_idx, out_idx * scale)).clamp(min=0)
    return lo, (overlap / scale).to(dtype)


def _area_columns(rows: torch.Tensor, w: int, dim: int) -> torch.Tensor:
    """Exact area resampling of axis ``dim`` of rows to w samples, by a cumulative sum in float64."""
    big_w = rows.shape[dim]
    r = rows.double().movedim(dim, -1)
    csum = F.pad(torch.cumsum(r, dim=-1), (1, 0))
    edges = torch.arange(w + 1, dtype=torch.float64, device=rows.device) * (big_w / w)
    base = edges.floor().long().clamp(max=big_w)
    frac = edges - base
    nxt = r[..., base.clamp(max=big_w - 1)]
    at = csum[..., base] + frac * torch.where(base < big_w, nxt, torch.zeros_like(nxt))
    return ((at[..., 1:] - at[..., :-1]) * (w / big_w)).float().movedim(-1, dim)


def area_downscale(
    src: PixelSource,
    size: tuple[int, int],
    device: torch.device,
    strip_pixels: int = DEFAULT_STRIP_PIXELS,
    pool: StripPool | None = None,
) -> torch.Tensor:
    """Resample the photo to size (h, w): exact area averaging when shrinking, bilinear when enlarging.

    Returns float32 [3,h,w] in [0,1]. Reads the source in strips (memory: one strip per pool thread plus [h,W,3]
    floats). ``pool``: CPU strips go to its threads (reading and converting in parallel, each strip's row sums
    added in strip order, so the result does not depend on the pool's size); None runs in the calling thread.
    """
    h, w = size
    big_h, big_w = src.height, src.width
    if h > big_h or w > big_w or (h == big_h and w == big_w):  # enlarging (or same size): small photo, read whole
        full = (src.read_float(0, big_h, device) / src.max_value).permute(2, 0, 1)
        if (h, w) == (big_h, big_w):
            return full.contiguous()
        return F.interpolate(full[None], size=(h, w), mode="bilinear", align_corners=False)[0].clamp_(0, 1)
    # The RGB view of an RGBX buffer: whole 4-byte pixels are read (contiguous rows, no strip copy), X dropped last.
    base = rgbx_base(src.data) if isinstance(src.data, np.ndarray) else None
    channels = 3 if base is None else 4
    acc = torch.zeros((h, big_w * channels), dtype=torch.float32, device=device)
    step = max(1, strip_pixels // big_w)
    starts = list(range(0, big_h, step))

    def read(y0: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        y1 = min(big_h, y0 + step)
        lo, weights = _area_matrix(big_h, h, y0, y1, torch.float32)
        if base is not None:
            strip = torch.from_numpy(base[y0:y1]).to(device, torch.float32)
        else:
            strip = src.read_float(y0, y1, device)
        return lo, weights.to(device), strip.view(y1 - y0, big_w * channels)

    def add(prepared: tuple[int, torch.Tensor, torch.Tensor]) -> None:
        # Adjacent strips share an output row; adding in strip order keeps the sums independent of the pool.
        lo, weights, strip = prepared
        acc[lo : lo + weights.shape[0]].addmm_(weights, strip)

    if pool is None or device.type != "cpu":
        for y0 in starts:
            add(read(y0))
    else:
        pool.run_ordered(read, add, starts)
    low = acc.view(h, big_w, channels)[:, :, :3]
    if pool is None or device.type != "cpu":
        low = _area_columns(low, w, dim=1)  # [h, w, 3]
    else:  # rows are independent: chunks of rows on the pool's threads, same numbers
        out = torch.empty((h, w, 3), dtype=torch.float32, device=device)
        chunk = max(1, -(-h // (4 * pool.workers)))

        def columns(r0: int) -> None:
            out[r0 : r0 + chunk] = _area_columns(low[r0 : r0 + chunk], w, dim=1)

        pool.run(columns, range(0, h, chunk))
        low = out
    return low.permute(2, 0, 1).div_(src.max_value).contiguous()


def resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one HxW plane (alpha) to size (h, w) with the same geometry as area_downscale; dtype kept."""
    src = PixelSource(np.repeat(plane[:, :, None], 3, axis=2))
    out = area_downscale(src, size, torch.device("cpu"))[0].numpy()
    if plane.dtype in (np.uint8, np.uint16):
        top = np.iinfo(plane.dtype).max
        return np.clip(np.rint(out * top), 0, top).astype(plane.dtype)
    return out.astype(plane.dtype)


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window counting only pixels inside the image (exact at borders), x [B,C,h,w].

    Separable depthwise convolutions (avg_pool2d with count_include_pad=False computes the same, ~7x slower).
    """
    c, (h, w) = x.shape[1], x.shape[-2:]
    k = 2 * radius + 1
    ones = torch.ones((c, 1, k, 1), dtype=x.dtype, device=x.device)
    y = F.conv2d(x, ones, padding=(radius, 0), groups=c)
    y = F.conv2d(y, ones.transpose(2, 3), padding=(0, radius), groups=c)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    n_rows = (rows + radius + 1).clamp(max=h) - (rows - radius).clamp(min=0)
    n_cols = (cols + radius + 1).clamp(max=w) - (cols - radius).clamp(min=0)
    return y / (n_rows[:, None] * n_cols[None, :]).to(x.dtype)


# Covariance pairs (a, c) in the order of the 6 unique entries of the symmetric 3x3 matrix, and where each of the
# 9 full-matrix entries (row-major) lives among them; cofactor (row-major) of entry (r, c) from those entries.
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
_FULL = (0, 1, 2, 1, 3, 4, 2, 4, 5)
_COFACTOR = (
    (3, 5, 4, 4),
    (2, 4, 1, 5),
    (1, 4, 2, 3),
    (2, 4, 1, 5),
    (0, 5, 2, 2),
    (1, 2, 0, 4),
    (1, 4, 2, 3),
    (1, 2, 0, 4),
    (0, 3, 1, 1),
)


def fit_affine(
    guide: torch.Tensor, target: torch.Tensor, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Local affine colour transform from guide to target (guided filter with a colour guide).

    guide, target: [B,3,h,w] float (guide in [0,1]). Returns coefficients [B,12,h,w] float32, already averaged over
    the window (the guided filter's second mean), so ``target ~ sum_k c[4c+k] * guide[k] + c[4c+3]``.
    Computed in float32 on data centred on its per-image mean (no cancellation in the covariances).
    """
    if guide.shape != target.shape or guide.ndim != 4 or guide.shape[1] != 3:
        raise ValueError(f"guide and target must both be [B,3,h,w], got {tuple(guide.shape)}, {tuple(target.shape)}")
    r = max(1, min(radius, (min(guide.shape[-2:]) - 1) // 2))
    i = guide.float()
    p = target.float()
    i = i - i.mean(dim=(2, 3), keepdim=True)  # the fit is invariant to shifting guide/target; b is fixed below
    p_mean = p.mean(dim=(2, 3), keepdim=True)
    p = p - p_mean
    dev = i.device
    pa = torch.tensor([a for a, _ in _PAIRS], device=dev)
    pc = torch.tensor([c for _, c in _PAIRS], device=dev)
    ii = i[:, pa] * i[:, pc]  # [B,6,h,w]
    ip = (i[:, :, None] * p[:, None, :]).flatten(1, 2)  # [B,9,h,w]: index 3*k + c = guide k times target c
    means = _box(torch.cat([i, p, ii, ip], 1), r)
    mi, mp, mii, mip = means[:, :3], means[:, 3:6], means[:, 6:12], means[:, 12:21]
    var = mii - mi[:, pa] * mi[:, pc]
    var[:, [0, 3, 5]] += eps
    cof = torch.tensor(_COFACTOR, device=dev)
    adj = var[:, cof[:, 0]] * var[:, cof[:, 1]] - var[:, cof[:, 2]] * var[:, cof[:, 3]]  # [B,9,h,w] row-major
    det = (var[:, [0, 1, 2]] * adj[:, [0, 1, 2]]).sum(1, keepdim=True)
    b_, _, h, w = i.shape
    inv = (adj / det).view(b_, 3, 3, h, w)  # [B,k,j]
    cov = (mip - mi.repeat_interleave(3, 1) * mp.repeat(1, 3, 1, 1)).view(b_, 3, 3, h, w)  # [B,j,c]
    a = (inv[:, None] * cov.permute(0, 2, 1, 3, 4)[:, :, None]).sum(3)  # [B,c,k]: sum_j inv[k,j] cov[j,c]
    b = mp - (a * mi[:, None]).sum(2)  # [B,c]
    # Undo the centring: target = A (guide - mean_g) + b + mean_p = A guide + (b + mean_p - A mean_g).
    g_mean = guide.float().mean(dim=(2, 3), keepdim=True)
    b = b + p_mean - (a * g_mean[:, None]).sum(2)
    coeffs = torch.cat([a, b[:, :, None]], 2).flatten(1, 2)  # [B,12,h,w] with index 4*c + k
    return _box(coeffs, r)


def blend_with_identity(coeffs: torch.Tensor, strength: float) -> torch.Tensor:
    """Coefficients of ``strength * transform + (1 - strength) * identity``: A' = s A + (1 - s) I, b' = s b.

    coeffs [...,12,h,w] (plane 4*c + k). Applying the result equals ``s * apply(coeffs) + (1 - s) * input`` for
    every input (the map is linear in its coefficients), so a weaker correction costs nothing at full size.
    s = 1 returns coeffs unchanged; s = 0 the identity exactly.
    """
    if strength == 1.0:
        return coeffs
    out = coeffs * strength
    out[..., [0, 5, 10], :, :] += 1.0 - strength
    return out


def apply_coefficients(coeffs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """coeffs [B,12,h,w] applied to image [B,3,h,w] at the same size (reference / low-resolution use)."""
    c = coeffs.view(coeffs.shape[0], 3, 4, *coeffs.shape[-2:])
    return (c[:, :, :3] * image[:, None]).sum(2) + c[:, :, 3]


def _row_map(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=False) source rows i0, i1 and weights for n_out output rows from n_in rows."""
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = pos.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0.to(device), i1.to(device), (pos - i0).float().to(device)


class StripKernel:
    """Applies coefficient rows to one strip: ``kernel(c, i0, i1, wy, pix, top, out_dtype) -> [S,W,3]``.

    c [12,h,w] low-resolution coefficients; i0, i1, wy [S] the bilinear rows and weights of the strip's output rows
    (indices into c); pix [S,W,3]. ``compiled=False`` is the eager path (few big kernels: vertical lerp at low width,
    one bilinear interpolate to the full width in channels_last, three multiply-adds; any device).
    ``compiled=True`` (CPU) runs the fused C loop of dpe_core.guided_native straight from the source array into the
    output array (no strip copies, any strides: HxWx3, HxWx4, planar), compiled once per machine (about a second,
    cached on disk) by ``prepare()``; calls fall back to the eager path for layouts it does not take.
    ``ready(dtype)``: the fused loop is loaded (a call before that compiles first).
    """

    def __init__(self, compiled: bool = False):
        self.compiled = compiled
        self._lock = threading.Lock()

    def library(self, build: bool = True):
        """The loaded C library (compiling it when ``build``), or None for the eager kernel / no compiler."""
        if not self.compiled:
            return None
        from dpe_core import guided_native

        lib = guided_native.load(build=build)
        if lib is None and build:
            raise RuntimeError("the fused apply loop could not be compiled (see the log); use the eager kernel")
        return lib

    def prepare(self) -> None:
        """Compile (or load from the disk cache) the fused loop now; raises RuntimeError when that fails."""
        self.library(build=True)

    def ready(self, dtype: torch.dtype | None = None) -> bool:
        return not self.compiled or self.library(build=False) is not None

    def __call__(self, c, i0, i1, wy, pix, top, out_dtype):
        s, big_w = pix.shape[0], pix.shape[1]
        vert = torch.lerp(c[:, i0], c[:, i1], wy[:, None])  # [12,S,w]
        vert = vert[None].contiguous(memory_format=torch.channels_last)
        full = F.interpolate(vert, size=(s, big_w), mode="bilinear", align_corners=False)  # [1,12,S,W] channels_last
        f4 = full[0].permute(1, 2, 0).view(s, big_w, 3, 4)
        f = pix.float()
        out = torch.addcmul(f4[..., 3], f4[..., 0], f[..., 0:1])
        out.addcmul_(f4[..., 1], f[..., 1:2])
        out.addcmul_(f4[..., 2], f[..., 2:3])
        return out.clamp_(0, top).to(out_dtype)


EAGER = StripKernel(compiled=False)


def _native_layout(src: np.ndarray | torch.Tensor, dst: np.ndarray | torch.Tensor) -> bool:
    """The fused C loop takes these arrays: same sample type in and out (uint8, uint16, float32), on the CPU."""
    if isinstance(src, torch.Tensor):
        return (
            isinstance(dst, torch.Tensor)
            and src.device.type == "cpu"
            and src.dtype == dst.dtype == torch.float32
            and min(src.stride()) >= 0
        )
    return (
        isinstance(dst, np.ndarray)
        and src.dtype == dst.dtype
        and src.dtype in (np.uint8, np.uint16, np.float32)
        and min(src.strides) >= 0
        and src.strides[2] > 0
    )


def apply_affine(
    src: PixelSource,
    coeffs: torch.Tensor,
    device: torch.device,
    strip_pixels: int = DEFAULT_STRIP_PIXELS,
    kernel: StripKernel = EAGER,
    pool: StripPool | None = None,
) -> np.ndarray | torch.Tensor:
    """Upsample coefficients [12,h,w] bilinearly to the photo's size and apply them, strip by strip.

    ``pool``: CPU strips go to its threads, a free thread taking the next strip (same numbers as serial: every
    strip's arithmetic is the same); None runs them in the calling thread.

    Returns the enhanced photo in the source's storage: numpy HxWx3 of the same dtype (uint8, uint16; floats
    become float32), or a torch [3,H,W] float32 tensor for a tensor source; values clipped to the valid range.
    """
    if coeffs.ndim != 3 or coeffs.shape[0] != 12:
        raise ValueError(f"coefficients must be [12,h,w], got {tuple(coeffs.shape)}")
    big_h, big_w = src.height, src.width
    top = src.max_value
    c = coeffs.to(device=device, dtype=torch.float32).clone()
    # Fold the storage scale and the rounding offset into the offsets: out_units = A @ in_units + (b*top + 0.5).
    c[3::4] = c[3::4] * top + (0.5 if src.is_integer else 0.0)
    i0, i1, wy = _row_map(c.shape[1], big_h, device)
    sink = PixelSink(src)
    step = max(1, strip_pixels // big_w)

    lib = kernel.library() if device.type == "cpu" else None
    native = lib is not None and _native_layout(src.data, sink.data)
    if native:
        from dpe_core.guided_native import apply_rows, column_map

        c = c.contiguous()
        cols = column_map(c.shape[2], big_w)
        planar = isinstance(src.data, torch.Tensor)
        # Fewer, larger strips: the loop works row by row in cache-sized buffers; strips only feed the pool.
        step = max(step, -(-big_h // (8 * (pool.workers if pool is not None else 1))))

    def strip(y0: int) -> None:  # disjoint rows of the sink: strips need no ordering
        y1 = min(big_h, y0 + step)
        if native:
            rows = (i0[y0:y1], i1[y0:y1], wy[y0:y1])
            s = src.data[:, y0:y1] if planar else src.data[y0:y1]
            d = sink.data[:, y0:y1] if planar else sink.data[y0:y1]
            apply_rows(lib, c, rows, cols, s, d, top, planar, sink.x_free)
            return
        pix = src.read(y0, y1, device)
        sink.write(y0, y1, kernel(c, i0[y0:y1], i1[y0:y1], wy[y0:y1], pix, top, sink.torch_dtype))

    if pool is None or device.type != "cpu":
        for y0 in range(0, big_h, step):
            strip(y0)
    else:
        pool.run(strip, range(0, big_h, step))
    return sink.data
