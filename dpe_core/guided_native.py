"""The fused full-resolution apply of guided upsampling as a small C loop (compiled once per machine, loaded with
ctypes).

Why C and not torch.compile: the apply is memory-bound (read 3 samples, write 3 per pixel) and its per-pixel work
is 12 coefficient interpolations and 9 multiply-adds. Inductor (torch 2.13) turned it into three passes over float
intermediates with a scalar inner loop over the 3 channels (24 MP: ~0.3 s on 2 cores, 10x the memory-bound
limit), and took 7-40 s to compile. The loop below works row by row in cache-sized float buffers (vertical
coefficient lerp at low width, horizontal lerp to the full width, de-interleave, three planes of multiply-adds,
clamp, convert, interleave) so that gcc/clang vectorise every inner loop; it compiles in about a second and is
cached on disk per source, compiler and CPU (``DPE_CACHE_DIR``, default ``~/.cache/dpe``).

Layout: any strided source and destination (HxWx3, HxWx4 with X padding, or planar [3,H,W]), given as element
strides per row, per pixel and per channel; uint8, uint16 or float32 samples (the same type in and out).
Rounding: the caller folds the output scale and +0.5 into the offsets; conversion truncates, like the eager path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

/* full-width coefficient row of low-res row r: out[k*W + x] = lerp(c[k][r][j0[x]], c[k][r][j0[x]+1], wx[x]) */
static void hrow(const float *c, int64_t h, int64_t w, int64_t r, const int32_t *j0, const int32_t *j1,
                 const float *wx, int64_t W, float *out) {
    for (int k = 0; k < 12; k++) {
        const float *a = c + (k * h + r) * w;
        float *o = out + k * W;
        for (int64_t x = 0; x < W; x++) {
            float l = a[j0[x]];
            o[x] = l + (a[j1[x]] - l) * wx[x];
        }
    }
}

/* out[c][x] = clamp(sum_k (A[4c+k][x] + D[4c+k][x] * wy) * p[k][x] + (A + D wy)[4c+3][x], 0, top) */
#define TILE 1024

/* n pixels; A, D: planes of stride W (the full width); p, o: planes of stride n */
static void affine(const float *A, const float *D, int64_t W, float wy, const float *p, int64_t n, float top,
                   float *o) {
    const float *r = p, *g = p + n, *b = p + 2 * n;
    for (int c = 0; c < 3; c++) {
        const float *a0 = A + (4 * c) * W, *a1 = a0 + W, *a2 = a1 + W, *a3 = a2 + W;
        const float *d0 = D + (4 * c) * W, *d1 = d0 + W, *d2 = d1 + W, *d3 = d2 + W;
        float *oc = o + c * n;
        for (int64_t x = 0; x < n; x++) {
            float y = (a0[x] + d0[x] * wy) * r[x] + (a1[x] + d1[x] * wy) * g[x] + (a2[x] + d2[x] * wy) * b[x]
                      + (a3[x] + d3[x] * wy);
            y = y < 0.0f ? 0.0f : y;
            oc[x] = y > top ? top : y;
        }
    }
}

#define DEFINE_APPLY(NAME, T)                                                                                  \
static void NAME##_load(const T *s, int64_t px, int64_t ch, int64_t W, float *p) {                             \
    float *r = p, *g = p + W, *b = p + 2 * W;                                                                  \
    if (ch == 1 && px == 3) {                                                                                  \
        for (int64_t x = 0; x < W; x++) { r[x] = s[3 * x]; g[x] = s[3 * x + 1]; b[x] = s[3 * x + 2]; }         \
    } else if (ch == 1 && px == 4 && sizeof(T) == 1) {                                                         \
        const uint32_t *sw = (const uint32_t *)s;                                                              \
        for (int64_t x = 0; x < W; x++) {                                                                      \
            uint32_t v = sw[x];                                                                                \
            r[x] = (float)(v & 255u); g[x] = (float)((v >> 8) & 255u); b[x] = (float)((v >> 16) & 255u);       \
        }                                                                                                      \
    } else if (px == 1) {                                                                                      \
        for (int64_t x = 0; x < W; x++) { r[x] = s[x]; g[x] = s[ch + x]; b[x] = s[2 * ch + x]; }               \
    } else {                                                                                                   \
        for (int64_t x = 0; x < W; x++) { r[x] = s[px * x]; g[x] = s[px * x + ch]; b[x] = s[px * x + 2 * ch]; } \
    }                                                                                                          \
}                                                                                                              \
static void NAME##_store(const float *o, int64_t W, T *d, int64_t px, int64_t ch, int x_free) {               \
    const float *r = o, *g = o + W, *b = o + 2 * W;                                                            \
    if (ch == 1 && px == 3) {                                                                                  \
        for (int64_t x = 0; x < W; x++) { d[3 * x] = (T)r[x]; d[3 * x + 1] = (T)g[x]; d[3 * x + 2] = (T)b[x]; } \
    } else if (ch == 1 && px == 4 && sizeof(T) == 1 && x_free) { /* RGBX words; the X byte is ours */      \
        uint32_t *dw = (uint32_t *)d;                                                                          \
        for (int64_t x = 0; x < W; x++)                                                                        \
            dw[x] = (uint32_t)r[x] | ((uint32_t)g[x] << 8) | ((uint32_t)b[x] << 16) | 0xFF000000u;             \
    } else if (px == 1) {                                                                                      \
        for (int64_t x = 0; x < W; x++) { d[x] = (T)r[x]; d[ch + x] = (T)g[x]; d[2 * ch + x] = (T)b[x]; }      \
    } else {                                                                                                   \
        for (int64_t x = 0; x < W; x++) {                                                                      \
            d[px * x] = (T)r[x]; d[px * x + ch] = (T)g[x]; d[px * x + 2 * ch] = (T)b[x];                      \
        }                                                                                                      \
    }                                                                                                          \
}                                                                                                              \
int NAME(const float *c, int64_t h, int64_t w, const int64_t *i0, const int64_t *i1, const float *wy,          \
         const int32_t *j0, const float *wx, int64_t W, int64_t S,                                             \
         const T *src, int64_t s_row, int64_t s_px, int64_t s_ch,                                              \
         T *dst, int64_t d_row, int64_t d_px, int64_t d_ch, int x_free, float top) {                           \
    float *buf = (float *)malloc(sizeof(float) * (size_t)(36 * W + 6 * TILE) + sizeof(int32_t) * (size_t)W);  \
    if (!buf) return -1;                                                                                       \
    float *rows[2] = {buf, buf + 12 * W}, *D = buf + 24 * W, *p = D + 12 * W, *o = p + 3 * TILE;              \
    int32_t *j1 = (int32_t *)(o + 3 * TILE);                                                                   \
    int64_t held[2] = {-1, -1}, last0 = -1, last1 = -1;                                                        \
    for (int64_t x = 0; x < W; x++) j1[x] = j0[x] + 1 < w ? j0[x] + 1 : (int32_t)(w - 1);                      \
    for (int64_t y = 0; y < S; y++) {                                                                          \
        if (i0[y] != last0 || i1[y] != last1) { /* rows advance: the old i1 row is usually the new i0 row */    \
            int a = held[0] == i0[y] ? 0 : (held[1] == i0[y] ? 1 : -1);                                        \
            if (a < 0) { a = held[0] == i1[y] ? 1 : 0; hrow(c, h, w, i0[y], j0, j1, wx, W, rows[a]);           \
                         held[a] = i0[y]; }                                                                    \
            int b = 1 - a;                                                                                     \
            if (held[b] != i1[y]) { hrow(c, h, w, i1[y], j0, j1, wx, W, rows[b]); held[b] = i1[y]; }           \
            if (b == 0) { float *t = rows[0]; rows[0] = rows[1]; rows[1] = t;                                  \
                          int64_t u = held[0]; held[0] = held[1]; held[1] = u; }                               \
            for (int64_t t = 0; t < 12 * W; t++) D[t] = rows[1][t] - rows[0][t];                               \
            last0 = i0[y]; last1 = i1[y];                                                                      \
        }                                                                                                      \
        for (int64_t x0 = 0; x0 < W; x0 += TILE) { /* column tiles: the float buffers stay in L1 */            \
            int64_t n = W - x0 < TILE ? W - x0 : TILE;                                                         \
            NAME##_load(src + y * s_row + x0 * s_px, s_px, s_ch, n, p);                                        \
            affine(rows[0] + x0, D + x0, W, wy[y], p, n, top, o);                                              \
            NAME##_store(o, n, dst + y * d_row + x0 * d_px, d_px, d_ch, x_free);                               \
        }                                                                                                      \
    }                                                                                                          \
    free(buf);                                                                                                 \
    return 0;                                                                                                  \
}

DEFINE_APPLY(dpe_apply_u8, uint8_t)
DEFINE_APPLY(dpe_apply_u16, uint16_t)
DEFINE_APPLY(dpe_apply_f32, float)
"""

FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c99")
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_FAILED: str | None = None
_CTYPES = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}


def cache_dir() -> Path:
    """Where compiled kernels live: $DPE_CACHE_DIR, else ~/.cache/dpe (XDG_CACHE_HOME honoured)."""
    if os.environ.get("DPE_CACHE_DIR"):
        return Path(os.environ["DPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpe"


def compiler() -> str | None:
    """The C compiler to use ($CC, else cc/gcc/clang on PATH), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    """Identifies the instruction set the library is built for (-march=native): CPU model and flags."""
    text = ""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [ln for ln in handle if ln.startswith(("model name", "flags"))][:2]
        text = "".join(lines)
    except OSError:
        pass
    return text or platform.processor() or platform.machine()


def load(build: bool = True) -> ctypes.CDLL | None:
    """The compiled kernel library; compiles it first when absent from the cache and ``build`` is true.

    Returns None when no compiler is available or compilation fails (the reason is logged once)."""
    global _LIB, _FAILED
    if _LIB is not None or _FAILED is not None:
        return _LIB
    with _LOCK:
        if _LIB is not None or _FAILED is not None:
            return _LIB
        cc = compiler()
        key = hashlib.sha256("\n".join([C_SOURCE, " ".join(FLAGS), str(cc), _cpu_key()]).encode()).hexdigest()[:20]
        path = cache_dir() / f"guided_apply_{key}.so"
        if not path.is_file():
            if not build:
                return None
            if cc is None:
                _FAILED = "no C compiler (cc, gcc, clang) on PATH"
                log.warning("native apply kernel unavailable: %s", _FAILED)
                return None
            try:
                _compile(cc, path)
            except (OSError, subprocess.SubprocessError) as exc:
                _FAILED = f"{type(exc).__name__}: {exc}"
                log.warning("native apply kernel unavailable: %s", _FAILED)
                return None
        lib = ctypes.CDLL(str(path))
        for suffix in ("u8", "u16", "f32"):
            fn = getattr(lib, f"dpe_apply_{suffix}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                           ctypes.c_float]
        _LIB = lib
        return lib


def _compile(cc: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source = Path(tmp) / "guided_apply.c"
        source.write_text(C_SOURCE)
        out = Path(tmp) / path.name
        done = subprocess.run([cc, *FLAGS, str(source), "-o", str(out)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.strip()[-500:] or f"{cc} exited {done.returncode}")
        os.replace(out, path)  # atomic: another process never loads a half-written library


def column_map(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) left source column (int32 [n_out]) and weight (float32) per output column."""
    pos = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    j0 = np.minimum(np.floor(pos), n_in - 1).astype(np.int32)
    return j0, (pos - j0).astype(np.float32)


def _strides(a: np.ndarray | torch.Tensor, planar: bool) -> tuple[int, int, int]:
    """(row, pixel, channel) strides in elements of HxWxC (planar: [C,H,W])."""
    if isinstance(a, torch.Tensor):
        st = a.stride()
        return (st[1], st[2], st[0]) if planar else (st[0], st[1], st[2])
    size = a.itemsize
    st = tuple(s // size for s in a.strides)
    return (st[1], st[2], st[0]) if planar else (st[0], st[1], st[2])


def _ptr(a: np.ndarray | torch.Tensor) -> int:
    return a.data_ptr() if isinstance(a, torch.Tensor) else a.ctypes.data


def apply_rows(
    lib: ctypes.CDLL,
    coeffs: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cols: tuple[np.ndarray, np.ndarray],
    src: np.ndarray | torch.Tensor,
    dst: np.ndarray | torch.Tensor,
    top: float,
    planar: bool = False,
    x_free: bool = False,
) -> None:
    """Apply contiguous float32 coefficients [12,h,w] to the rows of src, writing dst (same shape and dtype).

    rows: (i0, i1, wy) [S] int64/int64/float32 CPU tensors, the two coefficient rows and the vertical weight of each
    of the S rows of src; cols: column_map(w, W). src, dst: [S,W,C>=3] (or [C,S,W] when planar), any strides
    with positive element steps. ``x_free``: dst is the RGB view of an RGBX uint8 buffer whose 4th byte may be
    written (255). The caller keeps every array alive for the call (ctypes drops the GIL)."""
    dtype = np.dtype(str(src.dtype).replace("torch.", "")) if isinstance(src, torch.Tensor) else src.dtype
    fn = getattr(lib, f"dpe_apply_{_CTYPES[dtype]}")
    i0, i1, wy = rows
    j0, wx = cols
    h, w = coeffs.shape[1], coeffs.shape[2]
    s_row, s_px, s_ch = _strides(src, planar)
    d_row, d_px, d_ch = _strides(dst, planar)
    n_rows, width = (src.shape[1], src.shape[2]) if planar else (src.shape[0], src.shape[1])
    status = fn(coeffs.data_ptr(), h, w, i0.data_ptr(), i1.data_ptr(), wy.data_ptr(), j0.ctypes.data, wx.ctypes.data,
                width, n_rows, _ptr(src), s_row, s_px, s_ch, _ptr(dst), d_row, d_px, d_ch, int(x_free), float(top))
    if status != 0:
        raise MemoryError("native apply kernel: out of memory for its row buffers")


__all__ = ["apply_rows", "cache_dir", "column_map", "compiler", "load"]
