"""Generator forward speed at 512x512 against the matmul peak of the same dtype, measured in the same run.

    python benchmarks/model_speed.py [--batch 1 4] [--rounds 5] [--threads N] [--device auto|cpu|cuda] [--compile]

Rows: the naive eager GlobalUNetGenerator, the Enhancer's folded net (paper mode's forward, channels_last) and
``Enhancer.enhance_batch(mode="paper")`` end to end (uint8 in/out), in fp32 and - on CPUs with native bf16
(AVX512-BF16 / AMX) or on CUDA - under bf16 autocast (the Enhancer's ``bf16="on"``). Each is reported in GFLOP/s
(FLOPs counted with torch's FlopCounterMode on the 512-trained generator) and as a share of a 2048^3 matmul of its
own dtype (fp32 rows against the fp32 matmul, bf16 rows against the bf16 matmul), all candidates interleaved round
by round. Last: the bf16 gate on real photos (``--photos``, default $DPE_TESTDATA/natural): PSNR of the bundled
model's 8-bit paper-mode outputs, bf16 against fp32, and what the Enhancer's "auto" decided.

Only ratios from one run are comparable: a busy machine slows every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import best_of, machine, table  # noqa: E402
from dpe_core.inference import Enhancer  # noqa: E402
from dpe_core.inference_options import BF16_MIN_PSNR, cpu_has_native_bf16, psnr_8bit  # noqa: E402
from dpe_core.nn import build_generator  # noqa: E402

TESTDATA = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"))


def generator_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def real_photos(folder: Path, count: int, side: int = 512) -> list[np.ndarray]:
    """Up to ``count`` real photos from folder, long side reduced to ``side`` (uint8 HxWx3)."""
    from PIL import Image

    out = []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side), Image.Resampling.BOX)
            out.append(np.asarray(im).copy())
    return out


def bf16_gate(photos: list[np.ndarray]) -> list[list[object]]:
    """Rows: per photo the PSNR of bf16 vs fp32 8-bit outputs (bundled model, paper mode), then auto's verdict."""
    fp32 = Enhancer.from_pretrained("default", device="cpu", bf16="off")
    bf16 = Enhancer.from_pretrained("default", device="cpu", bf16="on")
    auto = Enhancer.from_pretrained("default", device="cpu", bf16="auto")
    rows = []
    for i, photo in enumerate(photos):
        a = torch.from_numpy(fp32.enhance(photo, "paper")).float() / 255
        b = torch.from_numpy(bf16.enhance(photo, "paper")).float() / 255
        auto.enhance(photo, "paper")
        rows.append([f"photo {i + 1} {photo.shape[1]}x{photo.shape[0]}", f"{psnr_8bit(a, b):.1f}"])
    verdict = auto.bf16.describe()
    rows.append(["Enhancer bf16='auto' decided", f"active={verdict['active']} (lowest checked "
                 f"{verdict['psnr_db']:.1f} dB over {verdict['checked']} images, needs {BF16_MIN_PSNR:g})"
                 if verdict["psnr_db"] is not None else f"active={verdict['active']} (no native bf16: not checked)"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the folded net (~1 min)")
    parser.add_argument("--photos", default=str(TESTDATA / "natural"), help="real photos for the bf16 gate")
    parser.add_argument("--gate-photos", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    generator = build_generator().to(device).eval()  # 512-trained configuration (paper mode runs it at 512)
    flops = generator_flops(generator, torch.rand(1, 3, 512, 512, device=device))
    native = device.type == "cuda" or cpu_has_native_bf16()
    dtypes = [torch.float32] + ([torch.bfloat16] if native else [])
    n = 2048
    mats = {d: (torch.randn(n, n, device=device, dtype=d), torch.randn(n, n, device=device, dtype=d)) for d in dtypes}
    rng = np.random.default_rng(0)
    photos = [(rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(max(args.batch))]
    threads = args.threads or torch.get_num_threads()
    candidates: dict[str, tuple] = {}  # name -> (fn, images, dtype, batch)
    for dtype in dtypes:
        tag = "fp32" if dtype == torch.float32 else "bf16"
        a, b = mats[dtype]
        candidates[f"matmul {tag}"] = (lambda a=a, b=b: a @ b, 0, dtype, 0)
        bf16 = "off" if dtype == torch.float32 else "on"
        enhancer = Enhancer(generator, device=device, bf16=bf16, threads=threads,
                            amp=(dtype != torch.float32) if device.type == "cuda" else None)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype != torch.float32)
        if dtype == torch.float32:
            x1 = torch.rand(1, 3, 512, 512, device=device)

            def naive(x1=x1):
                with torch.inference_mode():
                    generator(x1)

            candidates["naive eager GlobalUNetGenerator, fp32"] = (naive, 1, dtype, 1)
        for batch in args.batch:
            x = torch.rand(batch, 3, 512, 512, device=device)

            def folded(x=x, net=enhancer.net, autocast=autocast):
                with torch.inference_mode(), autocast:
                    net(x)

            candidates[f"Enhancer net (folded, channels_last), batch {batch}, {tag}"] = (folded, batch, dtype, batch)
            if batch == max(args.batch):
                candidates[f"Enhancer.enhance_batch paper, uint8, {tag}"] = (
                    lambda e=enhancer, k=batch: e.enhance_batch(photos[:k], "paper"), batch, dtype, batch)
        if args.compile:
            compiled = Enhancer(generator, device=device, bf16=bf16, threads=threads, compile=True)
            compiled.enhance_batch(photos[: max(args.batch)], "paper")  # compiles
            candidates[f"Enhancer paper + torch.compile, {tag}"] = (
                lambda e=compiled, k=max(args.batch): e.enhance_batch(photos[:k], "paper"), max(args.batch), dtype,
                max(args.batch))
    timings = best_of({k: v[0] for k, v in candidates.items()}, args.rounds, device)
    peak = {d: 2 * n**3 / timings[f"matmul {'fp32' if d == torch.float32 else 'bf16'}"] / 1e9 for d in dtypes}
    rows = []
    for name, (_, images, dtype, batch) in candidates.items():
        if name.startswith("matmul"):
            rows.append([name, "-", "-", peak[dtype], f"{peak[dtype]:.1f}", "100%"])
            continue
        rate = images / timings[name]
        gflops = rate * flops / 1e9
        rows.append([name, batch, rate, gflops, f"{peak[dtype]:.1f}", f"{100 * gflops / peak[dtype]:.0f}%"])
    print(f"machine: {machine()}")
    print(f"generator at 512x512 (512-trained configuration): {flops / 1e9:.2f} GFLOP per image; {threads} torch "
          f"threads; native bf16: {'yes' if native else 'no'}; best of {args.rounds} interleaved rounds; load "
          f"average {os.getloadavg()[0]:.2f} after")
    print(table(["variant", "batch", "images/s", "GFLOP/s", "matmul GFLOP/s (same dtype)", "of matmul"], rows))
    if device.type == "cpu" and native:
        photos_dir = Path(args.photos)
        real = real_photos(photos_dir, args.gate_photos) if photos_dir.is_dir() else []
        if not real:
            print(f"\nbf16 gate: skipped (no real photos under {photos_dir}; set DPE_TESTDATA)")
            return
        print(f"\nbf16 vs fp32 on real photos ({photos_dir}, long side 512; bundled model, paper mode, 8-bit outputs;"
              f" the gate needs >= {BF16_MIN_PSNR:g} dB)")
        print(table(["photo", "PSNR bf16 vs fp32 dB"], bf16_gate(real)))


if __name__ == "__main__":
    main()
