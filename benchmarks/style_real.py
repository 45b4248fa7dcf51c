"""Real-style demonstration without ground truth: kphotoalbum photos -> the look of the lomiri wallpapers.

    python benchmarks/style_real.py --work ~/dpe-runs/style-real --sheet docs/images/style-real-contact.jpg

Source photos: the kphotoalbum demo photos (``kpa_*``) of the shared natural folder, split (seeded) into the
photos the model trains on and held-out photos it never reads. References: the lomiri wallpapers (``lomiri_*``),
a different photographer's finish (brighter, more saturated, more contrast). The unpaired two-way GAN trains on
source -> references (resumable from its checkpoints; a finished run is only re-scored), is exported as a model
that ``dpe enhance --model`` takes, and is applied (Enhancer, mode full) to the held-out photos.

There is no right answer to score against, so the report says how far the outputs moved towards the references:
colour statistics (mean and spread of L*, a*, b*, saturation, contrast) of the held-out photos, of the outputs
and of the references, and the Hellinger distance between joint Lab histograms (held-out -> references vs
outputs -> references). Writes a contact sheet (held-out | output per row, a row of references) and results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpe_core.quality.report import load_photos  # noqa: E402
from dpe_core.quality.style import colour_statistics, lab_histogram_distance  # noqa: E402
from dpe_core.sysinfo import machine  # noqa: E402
from dpe_core.training import TrainConfig  # noqa: E402
from dpe_core.training.loop import export_model, train  # noqa: E402

TESTDATA = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"))


def prepare(photos: Path, work: Path, held_out: int, seed: int, long_side: int) -> dict[str, list[str]]:
    """Write source/, reference/ and test/ PNGs (long side <= long_side) under work; return the names per role."""
    names = sorted(p.name for p in photos.iterdir())
    kpa = [n for n in names if n.startswith("kpa_")]
    lomiri = [n for n in names if n.startswith("lomiri_")]
    if len(kpa) <= held_out or not lomiri:
        raise SystemExit(f"{photos}: need more than {held_out} kpa_* photos and some lomiri_* photos")
    shuffled = kpa[:]
    random.Random(seed).shuffle(shuffled)
    roles = {"test": sorted(shuffled[:held_out]), "source": sorted(shuffled[held_out:]), "reference": lomiri}
    for role, role_names in roles.items():
        folder = work / role
        folder.mkdir(parents=True, exist_ok=True)
        for name, pixels in load_photos(photos, role_names, long_side):
            Image.fromarray((pixels * 255 + 0.5).astype(np.uint8)).save(folder / (Path(name).stem + ".png"))
    return roles


def read_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 float32 in [0,1]) for the PNGs of a folder, sorted."""
    return [(p.name, np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0)
            for p in sorted(folder.glob("*.png"))]


def contact_sheet(rows: list[tuple[np.ndarray, np.ndarray]], references: list[np.ndarray], path: Path,
                  height: int = 160) -> None:
    """JPEG: one row per held-out photo (input | output), then one row of references; labelled."""
    def thumb(image: np.ndarray) -> Image.Image:
        im = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
        return im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)

    lines = [[thumb(a), thumb(b)] for a, b in rows] + [[thumb(r) for r in references[:4]]]
    label = 18
    width = max(sum(t.width for t in line) + 4 * (len(line) - 1) for line in lines)
    sheet = Image.new("RGB", (width, label + len(lines) * (height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), "held-out kphotoalbum photo | model output;  last row: lomiri references", fill="black")
    for i, line in enumerate(lines):
        x = 0
        for t in line:
            sheet.paste(t, (x, label + i * (height + 4)))
            x += t.width + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path.home() / "dpe-runs" / "style-real")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet path (default WORK/contact.jpg)")
    parser.add_argument("--held-out", type=int, default=6, help="kphotoalbum photos kept out of training")
    parser.add_argument("--size", type=int, default=64, help="training square (px)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=1500, help="two-way iterations (critic steps)")
    parser.add_argument("--ratio", type=int, default=5, help="critic steps per generator step (release: 50)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--identity-weight", type=float, default=1e3)
    parser.add_argument("--cycle-weight", type=float, default=1e4)
    parser.add_argument("--transport-weight", type=float, default=0.0,
                        help="weight of the colour-transport target (TrainConfig.transport_weight; 0: off)")
    parser.add_argument("--transport-kind", choices=["quantile", "affine"], default="quantile",
                        help="the colour transport's kind (TrainConfig.transport_kind)")
    parser.add_argument("--fixed-lambda", type=float, default=None, help="WGAN-GP weight instead of A-WGAN")
    parser.add_argument("--critic-stats", choices=["off", "add", "only"], default="off",
                        help="the critic's colour-statistics branch (off: the release's critic)")
    parser.add_argument("--critic-lr-scale", type=float, default=1.0, help="critic lr = lr x this (release 1)")
    parser.add_argument("--seed", type=int, default=2010)
    parser.add_argument("--long-side", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    data = args.work / "data"
    roles = prepare(TESTDATA / "natural", data, args.held_out, args.seed, args.long_side)
    extra = {} if args.fixed_lambda is None else {
        "adaptive_lambda": {"initial": args.fixed_lambda, "upper": 1e30, "lower": 0.0}}
    if args.critic_stats != "off":
        extra["critic"] = {"global_stats": args.critic_stats}
    config = TrainConfig(
        mode="two-way", steps=args.iterations, lr=args.lr, critic_steps_per_generator_step=args.ratio,
        critic_lr_scale=args.critic_lr_scale, identity_weight=args.identity_weight,
        cycle_weight=args.cycle_weight, transport_weight=args.transport_weight,
        transport_kind=args.transport_kind, image_size=args.size,
        batch_size=args.batch, seed=args.seed, threads=1, checkpoint_url=str(args.work / "checkpoints"),
        checkpoint_every=max(50, args.iterations // 10), keep_checkpoints=2, log_every=25, eval_every=10**9,
        data={"source_url": str(data / "source"), "reference_url": str(data / "reference")}, **extra)
    result = train(config)
    model_dir = args.work / "model"
    export_model(result, str(model_dir), "style-lomiri", "1", card={
        "look": "lomiri wallpapers (real photos, no ground truth)", "source_photos": roles["source"],
        "reference_photos": roles["reference"], "held_out_photos": roles["test"]})

    from dpe_core.inference import Enhancer

    enhancer = Enhancer.from_pretrained(str(model_dir))
    held = read_folder(data / "test")
    outputs = [np.asarray(enhancer.enhance(image, mode="full"), dtype=np.float32) for _, image in held]
    references = [image for _, image in read_folder(data / "reference")]
    inputs = [image for _, image in held]
    stats = {"held-out photos": colour_statistics(inputs), "model outputs": colour_statistics(outputs),
             "lomiri references": colour_statistics(references)}
    distance = {"held-out -> references": lab_histogram_distance(inputs, references),
                "outputs -> references": lab_histogram_distance(outputs, references)}
    sheet = args.sheet or args.work / "contact.jpg"
    contact_sheet(list(zip(inputs, outputs, strict=True)), references, sheet)

    print(f"machine: {machine()}")
    print(f"{len(roles['source'])} kphotoalbum sources, {len(roles['reference'])} lomiri references, "
          f"{len(held)} held-out; {args.size} px, batch {args.batch}, {result.iteration} two-way iterations at "
          f"{args.ratio} critic steps per generator step; identity / cycle weights {args.identity_weight:g} / "
          f"{args.cycle_weight:g}; transport weight {args.transport_weight:g} ({args.transport_kind}); "
          f"critic statistics {args.critic_stats}, "
          f"critic lr x{args.critic_lr_scale:g}")
    keys = list(next(iter(stats.values())))
    print("| set | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in stats.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    for name, value in distance.items():
        print(f"Lab histogram distance (Hellinger) {name}: {value:.3f}")
    print(f"contact sheet: {sheet}")
    (args.work / "results.json").write_text(json.dumps(
        {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "colour_statistics": stats,
         "lab_histogram_distance": distance, "lambdas": {k: v for k, v in result.metrics.items()
                                                         if k.startswith("lambda_")}}, indent=2))


if __name__ == "__main__":
    main()
