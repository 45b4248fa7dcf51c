"""Generator forward speed at 512x512 on the current device, beside a 2048^3 matmul measured in the same run.

    python benchmarks/model_speed.py [--batch 1 4] [--repeats 5] [--device auto|cpu|cuda]

Prints a table: images/s, achieved GFLOP/s of the generator (FLOPs counted with torch's FlopCounterMode),
the matmul's GFLOP/s and the ratio between them. Only ratios from one run are comparable: a busy machine
slows both figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from dpe_core.nn import build_generator  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(device: torch.device, dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, device, repeats) / 1e9


def generator_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    model = build_generator().to(device).eval()
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    print(f"machine: {machine()}")
    print(
        f"generator at {args.size}x{args.size}: "
        f"{generator_flops(model, torch.rand(1, 3, args.size, args.size, device=device)) / 1e9:.2f} GFLOP per image"
    )
    header = f"{'dtype':>9} {'batch':>5} {'images/s':>9} {'GFLOP/s':>9} {'matmul GFLOP/s':>15} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for dtype in dtypes:
        peak = matmul_gflops(device, dtype, args.repeats)
        for batch in args.batch:
            x = torch.rand(batch, 3, args.size, args.size, device=device)
            flops = generator_flops(model, x)
            autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

            def forward(x=x, autocast=autocast):
                with torch.inference_mode(), autocast:
                    model(x)

            seconds = best_time(forward, device, args.repeats)
            achieved = flops / seconds / 1e9
            print(
                f"{str(dtype).split('.')[-1]:>9} {batch:>5} {batch / seconds:>9.2f} {achieved:>9.1f} "
                f"{peak:>15.1f} {achieved / peak:>6.2f}"
            )


if __name__ == "__main__":
    main()
