"""Style benchmark: does the unpaired two-way GAN learn a known look it never saw in pairs, and how close does it
come to a supervised model trained on the pairs with the same budget?

    python benchmarks/style.py --look warm-contrast --work ~/dpe-runs/style      # ~1 h on one CPU core
    python benchmarks/style.py --look cool-faded --variants unpaired supervised
    python benchmarks/style.py --variants unpaired wgan-gp-10 shared-bn        # ablations (same budget)

Real photos of the shared natural folder are split (seeded) into S (sources), R (references: L applied) and T
(held-out test: scored against L(t)); see dpe_core.quality.style. Every variant trains with the same image size,
batch, iterations and seed, resumes from its checkpoints when run again (a finished run is only re-scored), and
is exported as a model file that `dpe enhance --model` takes. Scores: PSNR and CIEDE2000 of the model's output
(Enhancer, mode full) against L(t) over T, beside the identity (t against L(t)). Prints a table with the machine
line and writes results.json in the work folder.

Variants: ``unpaired`` (two-way GAN, A-WGAN, individual BN: the paper's method), ``supervised`` (the same
generator on the pairs (s, L(s)): the paired upper bound, same number of generator updates), ``wgan-gp-X``
(fixed gradient-penalty weight X instead of A-WGAN), ``shared-bn`` (one BN set for real and generated inputs),
``unpaired-stats`` / ``unpaired-stats-only`` (the critic's colour-statistics branch added to its convs, or alone),
``transport-supervised`` (the generator alone on the pairs (s, T(s)), T the no-training colour transport S -> L(R):
what ``--transport-weight`` gives without the GAN).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpe_core.io.places import DestinationError, check_apart  # noqa: E402
from dpe_core.quality.looks import LOOKS  # noqa: E402
from dpe_core.quality.report import load_photos  # noqa: E402
from dpe_core.quality.style import (  # noqa: E402
    StyleSplit,
    colour_histograms,
    deal_extra_photos,
    link_photo_pool,
    load_pairs,
    match_colours,
    mean_luminance,
    pooled_histogram_transfer,
    prepare_style_sets,
    score_against_look,
    split_style_photos,
)
from dpe_core.sysinfo import machine  # noqa: E402
from dpe_core.training import TrainConfig  # noqa: E402
from dpe_core.training.checkpoint import checkpoint_urls, list_checkpoints  # noqa: E402
from dpe_core.training.loop import export_model, train  # noqa: E402
from dpe_core.training.progress import read_history  # noqa: E402
from dpe_core.training.select import average_checkpoints, export_checkpoint, load_step  # noqa: E402
from dpe_core.training.transport import AffineColourTransport, QuantileColourTransport  # noqa: E402

TESTDATA = Path(os.environ.get("DPE_TESTDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"))


def model_method(enhancer):
    """HxWx3 float32 -> the enhancer's full-mode output as float32."""
    return lambda image: np.asarray(enhancer.enhance(image, mode="full"), dtype=np.float32)


def photo_method(transform):
    """A batch transform [B,3,H,W] -> [B,3,H,W] as a method on one HxWx3 float32 photo."""
    return lambda image: transform(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()


def variant_config(variant: str, folders: dict[str, Path], args, checkpoints: Path) -> TrainConfig:
    """The TrainConfig of one variant; all share size, batch, seed and the number of generator updates."""
    common = {"image_size": args.size, "batch_size": args.batch, "seed": args.seed, "threads": 1,
              "checkpoint_url": str(checkpoints), "checkpoint_every": max(50, args.iterations // 10),
              "keep_checkpoints": 2, "log_every": 25, "eval_every": 10**9}
    if args.average_from or args.choose_on_s:  # every checkpoint kept: averaged or chosen from after the run
        common |= {"checkpoint_every": max(10, args.iterations // 20), "keep_checkpoints": 1000}
    if args.global_affine:  # the default model's colour affine from input statistics, at its lr scale
        common |= {"generator": {"global_affine": True}, "lr_scales": {"affine_mlp.": 13.333}}
    generator_updates = args.iterations // args.ratio
    if variant in ("supervised", "transport-supervised"):
        # transport-supervised: the pairs (s, T(s)), T the pooled colour transport S -> L(R): the transport target
        # alone, without the GAN (still unpaired: L(s) is never read).
        targets = folders["pair_target" if variant == "supervised" else "transport_target"]
        return TrainConfig(mode="supervised", steps=generator_updates, lr=args.lr, precision=args.precision,
                           data={"input_url": str(folders["pair_input"]), "target_url": str(targets)}, **common)
    gan = {"mode": "two-way", "steps": args.iterations, "lr": args.lr,
           "critic_steps_per_generator_step": args.ratio, "precision": args.precision,
           "critic_lr_scale": args.critic_lr_scale,
           "identity_weight": args.identity_weight, "cycle_weight": args.cycle_weight,
           "transport_weight": args.transport_weight, "transport_kind": args.transport_kind,
           "data": {"source_url": str(folders["source"]), "reference_url": str(folders["reference"])}}
    if args.transport_init:
        gan["transport_init"] = True
        common["generator"] = common.get("generator", {}) | {"colour_prior": True}
    if args.critic_stats != "off":  # the ablations on top of the critic that learns the look
        gan["critic"] = {"global_stats": args.critic_stats} | (
            {"cross_channel_stats": True} if args.critic_cross_channel else {})
    if variant == "unpaired":
        return TrainConfig(**gan, **common)
    if variant.startswith("wgan-gp-"):
        fixed = float(variant.removeprefix("wgan-gp-"))
        # A fixed weight: never grows (upper unreachable), never shrinks (lower 0).
        return TrainConfig(**gan, adaptive_lambda={"initial": fixed, "upper": 1e30, "lower": 0.0}, **common)
    if variant == "shared-bn":
        return TrainConfig(**gan, individual_bn=False, **common)
    if variant in ("unpaired-stats", "unpaired-stats-only"):
        # The critic's colour-statistics branch (CriticConfig.global_stats), added to the conv critic or alone.
        return TrainConfig(**gan, critic={"global_stats": "add" if variant == "unpaired-stats" else "only"},
                           **common)
    raise SystemExit(f"unknown variant {variant!r}")


def checkpoint_on_s(checkpoints: Path, source_pairs) -> dict:
    """The checkpoint whose G_X scores best on S (G(s) against L(s), PSNR dB): {"sidecar", "iteration", "trace"},
    the trace listing [iteration, S dB] of every checkpoint. S is where unpaired runs may be chosen; T is never
    read."""
    from dpe_core.inference import Enhancer

    trace = []
    for iteration in list_checkpoints(str(checkpoints)):
        sidecar = checkpoint_urls(str(checkpoints), iteration)[1]
        s_psnr = score_against_look(source_pairs, model_method(Enhancer(load_step(sidecar).enhancer)),
                                    colour=False)["psnr"]
        trace.append([iteration, round(s_psnr, 3), sidecar])
    best = max(trace, key=lambda row: (row[1], row[0]))
    return {"sidecar": best[2], "iteration": best[0], "trace": [row[:2] for row in trace]}


def scored_as_exported(run_dir: Path, scores: dict) -> dict:
    """The results row of a run trained elsewhere (--score-only): its scores beside its training time, last
    iteration, penalty weights and stability from RUN/checkpoints/history.jsonl and the exported iteration from
    RUN/model/model.json."""
    history = read_history(str(run_dir / "checkpoints"))
    if not history:
        raise SystemExit(f"{run_dir}: no checkpoints/history.jsonl, so nothing says how its model was trained")
    last = history[-1]
    exported = json.loads((run_dir / "model" / "model.json").read_text())["training"]["iterations"]
    numbers = [v for h in history for v in h.values() if isinstance(v, float)]
    return scores | {"seconds": max(float(h.get("seconds", 0.0)) for h in history), "iterations": last["iteration"],
                     "stable": bool(np.all(np.isfinite(numbers))), "exported_iteration": exported,
                     "lambda_trace": lambda_trace(history)} | {
                         k: last[k] for k in ("lambda_y", "lambda_x") if k in last}


def lambda_trace(history: list[dict]) -> list[float]:
    """The generator-side penalty weight lambda_Y at a quarter, half, three quarters and the end of a two-way run
    (empty for runs without one): whether the adaptive rule settled or ran away."""
    points = [h for h in history if "lambda_y" in h]
    if not points:
        return []
    last = points[-1]["iteration"]
    return [next(h["lambda_y"] for h in points if h["iteration"] >= last * q) for q in (0.25, 0.5, 0.75, 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--look", default="warm-contrast", choices=sorted(LOOKS))
    parser.add_argument("--work", type=Path, default=Path.home() / "dpe-runs" / "style")
    parser.add_argument("--variants", nargs="+", default=["supervised", "unpaired"])
    parser.add_argument("--test", type=int, default=10, help="held-out test photos (T)")
    parser.add_argument("--size", type=int, default=64, help="training square (px)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=1500, help="two-way iterations (critic steps)")
    parser.add_argument("--ratio", type=int, default=5, help="critic steps per generator step (release: 50)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--critic-lr-scale", type=float, default=1.0, help="critic lr = lr x this (release 1)")
    parser.add_argument("--seed", type=int, default=2010)
    # A critic held near 1-Lipschitz (gradient penalty) can tell a look apart by about the L2 norm of the change,
    # which grows with the image side, while the identity and cycle terms are per-pixel means: at 64 px the
    # release's weights (1e3, 1e4; set for 512 px) weigh 8x more against the adversarial term than at 512 px.
    parser.add_argument("--identity-weight", type=float, default=1e3, help="weight of MSE(G(x), x) (release 1e3)")
    parser.add_argument("--cycle-weight", type=float, default=1e4, help="weight of the cycle MSE (release 1e4)")
    parser.add_argument("--transport-weight", type=float, default=0.0,
                        help="two-way: weight of the colour-transport target (TrainConfig.transport_weight; 0: the "
                             "release's losses only); name runs with --tag")
    parser.add_argument("--transport-init", action="store_true",
                        help="unpaired variants: the generators start at the transport (T for G_X, T^-1 for G_Y) "
                        "through their colour priors (TrainConfig.transport_init)")
    parser.add_argument("--transport-kind", choices=["quantile", "affine"], default="quantile",
                        help="the colour transport's kind (TrainConfig.transport_kind)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--long-side", type=int, default=256, help="long side of the prepared photos")
    parser.add_argument("--critic-stats", choices=["off", "add", "only"], default="off",
                        help="the critic's colour-statistics branch for every two-way variant (off: the release's "
                             "critic); runs go to VARIANT-critic-MODE")
    parser.add_argument("--critic-cross-channel", action="store_true",
                        help="the statistics branch also reads opponent-axis marginals and channel correlations "
                             "(CriticConfig.cross_channel_stats; needs --critic-stats); name runs with --tag")
    parser.add_argument("--split", choices=["matched", "matched-opponent", "balanced", "shuffled"], default="matched",
                        help="S and R re-dealt until their pooled colours match (matched, from the balanced deal), "
                             "dealt by mean luminance (balanced), or by the seeded shuffle alone; T is the same")
    parser.add_argument("--global-affine", action="store_true",
                        help="every variant's generator also predicts a colour affine from its input's statistics "
                             "(GeneratorConfig.global_affine, lr x13.3 as for the default model); name runs with --tag")
    parser.add_argument("--average-from", type=float, default=0.0,
                        help="export the mean generator weights of the checkpoints from this fraction of the run on "
                             "(e.g. 0.5; every variant, paired included); 0: the last weights")
    parser.add_argument("--choose-on-s", action="store_true",
                        help="export the checkpoint that scores best on S (G(s) vs L(s)) instead of the last; every "
                             "variant, paired included")
    parser.add_argument("--extra-photos", type=Path, action="append", default=[],
                        help="a folder of more real photos (documented sources) for S and R only, never T "
                        "(repeatable); T stays the same 10 natural photos")
    parser.add_argument("--tag", default="", help="appended to each run's folder name (runs with other settings)")
    parser.add_argument("--data", type=Path,
                        help="a data folder prepared by an earlier run (WORK/LOOK/data-*, with its split.json): used "
                             "as it is, the photos are not read (a lent GPU machine has only this folder)")
    parser.add_argument("--no-colour", action="store_true",
                        help="PSNR only, CIEDE2000 left out (for a machine without scikit-image)")
    parser.add_argument("--score-only", action="store_true",
                        help="no training: score each variant's exported model (RUN/model) as it is, e.g. one "
                             "trained elsewhere; its training time is read from RUN/checkpoints/history.jsonl")
    args = parser.parse_args()
    if args.critic_cross_channel and args.critic_stats == "off":
        parser.error("--critic-cross-channel needs --critic-stats add or only")
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the training status lines

    photos = TESTDATA / "natural"
    try:  # it writes derived photos, links and checkpoints under --work
        check_apart(str(args.work), [str(f) for f in (photos, *args.extra_photos)], "work folder (--work)")
    except DestinationError as exc:
        parser.error(str(exc))
    if args.data:
        split, data_dir, photos = prepared_split(args, parser), args.data, args.data
    else:
        split, data_dir, photos = prepare_data(args, photos)
    folders = {role: data_dir / role for role in ("source", "reference", "pair_input", "pair_target", "test",
                                                  "test_target")}
    test_pairs = load_pairs(folders["test"], folders["test_target"])
    run_variants(args, split, folders, photos, test_pairs)


def prepared_split(args, parser) -> StyleSplit:
    """The split of a prepared data folder (--data); its split name, seed and long side replace the arguments', so
    runs get the same folder names as where it was prepared."""
    try:
        recorded = json.loads((args.data / "split.json").read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--data {args.data}: no readable split.json ({exc}); prepare it with a run without --data")
    args.split, args.seed, args.long_side = recorded["split"], recorded["seed"], recorded["long_side"]
    return StyleSplit(recorded["source"], recorded["reference"], recorded["test"])


def prepare_data(args, photos: Path) -> tuple[StyleSplit, Path, Path]:
    """Split the natural photos (and --extra-photos) into S, R and T and prepare the data folder once:
    (split, data folder, the folder the photos were read from)."""
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    balance = mean_luminance(photos, names) if args.split != "shuffled" else None
    split = split_style_photos(names, test=args.test, seed=args.seed, balance=balance)
    if args.extra_photos:
        pool = args.work / args.look / "photos-pool"
        extra = [n for n in link_photo_pool([photos, *args.extra_photos], pool) if not (photos / n).exists()]
        photos, split = pool, deal_extra_photos(split, extra)
    if args.split.startswith("matched"):  # matched-opponent: also along the opponent axes (R-G, G-B, R-B)
        split = match_colours(split, colour_histograms(photos, split.source + split.reference,
                                                       opponent=args.split == "matched-opponent"))
    data_dir = args.work / args.look / ("data" if args.split == "balanced" else f"data-{args.split}")
    if args.extra_photos:  # its own folder: the splits of the natural photos alone keep theirs
        data_dir = data_dir.with_name(f"{data_dir.name}-extra{len(split.source) + len(split.reference)}")
    split_file = data_dir / "split.json"
    wanted = {"split": args.split, "seed": args.seed, "long_side": args.long_side} | asdict(split)
    if not split_file.is_file() or json.loads(split_file.read_text()) != wanted:
        if data_dir.exists():
            shutil.rmtree(data_dir)  # prepared for another split: its S and R would not be this run's
        prepare_style_sets(photos, data_dir, args.look, split, long_side=args.long_side)
        split_file.write_text(json.dumps(wanted, indent=1))
    return split, data_dir, photos


def run_variants(args, split: StyleSplit, folders: dict[str, Path], photos: Path, test_pairs) -> None:
    """Train (or, with --score-only, only score) every variant, print the table and write results.json."""
    from dpe_core.inference import Enhancer

    source_pairs = load_pairs(folders["pair_input"], folders["pair_target"])

    def scores_of(method) -> dict:
        """T's scores, and G(s) against L(s) on S as "s_psnr": where an unpaired run may be chosen (it never saw
        L(s)); for the supervised model S is its training pairs."""
        colour = not args.no_colour
        return score_against_look(test_pairs, method, colour) | {
            "s_psnr": score_against_look(source_pairs, method, colour=False)["psnr"]}

    rows = {"identity (t vs L(t))": scores_of(lambda image: image) | {"seconds": 0.0}}
    # Yardsticks without training: what matching the pooled colours of S to L(R) gives (unpaired, like the GAN),
    # and the same with L(S) as the references: the colours of the very photos, still never a pixel pair.
    sources, looked_sources = [s for _, s, _ in source_pairs], [ls for _, _, ls in source_pairs]
    references = [pixels for _, pixels in load_photos(folders["reference"])]
    # The no-training transports S -> L(R) of both kinds: yardsticks, and the transport-supervised variant's targets.
    source_tensors, reference_tensors = ([torch.from_numpy(im).permute(2, 0, 1) for im in group]
                                         for group in (sources, references))
    affine = AffineColourTransport.fit(source_tensors, reference_tensors)
    # Both kinds in a row, as a generator's colour prior can hold them (curves, then a matrix): the per-channel
    # quantile map, then the affine map from the curved sources to L(R).
    curves = QuantileColourTransport.fit(source_tensors, reference_tensors)
    then_matrix = AffineColourTransport.fit([curves.forward(s[None])[0] for s in source_tensors], reference_tensors)
    transfers = {
        "quantile": pooled_histogram_transfer(sources, references),
        # A colour matrix: cross-channel changes such as saturation, no curves.
        "affine": photo_method(affine.forward),
    }
    rows["histogram transfer S -> L(R)"] = scores_of(transfers["quantile"]) | {"seconds": 0.0}
    rows["histogram transfer S -> L(S)"] = scores_of(pooled_histogram_transfer(sources, looked_sources)) | {
        "seconds": 0.0}
    rows["affine colour transfer S -> L(R)"] = scores_of(transfers["affine"]) | {"seconds": 0.0}
    rows["curves then colour matrix S -> L(R)"] = scores_of(
        photo_method(lambda batch: then_matrix.forward(curves.forward(batch)))) | {"seconds": 0.0}
    if "transport-supervised" in args.variants:  # T(s) for every source photo, T = the transfer S -> L(R)
        folders["transport_target"] = folders["source"].parent / f"transport_target-{args.transport_kind}"
        folders["transport_target"].mkdir(exist_ok=True)
        transfer = transfers[args.transport_kind]
        for name, source, _ in source_pairs:
            pixels = np.clip(transfer(source) * 255 + 0.5, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folders["transport_target"] / name)
    for variant in args.variants:
        run_dir = args.work / args.look / (variant if args.critic_stats == "off" or "supervised" in variant
                                           else f"{variant}-critic-{args.critic_stats}")
        if args.split != "balanced":  # runs of the earlier (balanced) split keep their folders
            run_dir = run_dir.with_name(f"{run_dir.name}-{args.split}")
        if args.tag:
            run_dir = run_dir.with_name(f"{run_dir.name}-{args.tag}")
        config = variant_config(variant, folders, args, run_dir / "checkpoints")
        if args.score_only:
            if not (run_dir / "model" / "model.safetensors").is_file():
                raise SystemExit(f"{run_dir / 'model'}: no exported model to score; --score-only scores a model "
                                 "trained elsewhere: put its model.json and model.safetensors there")
            rows[variant] = scored_as_exported(run_dir, scores_of(model_method(
                Enhancer.from_pretrained(str(run_dir / "model")))))
            continue
        started = time.perf_counter()
        result = train(config)
        trained_s = time.perf_counter() - started
        if args.average_from:
            result = average_checkpoints(str(run_dir / "checkpoints"), int(config.steps * args.average_from))
        history = read_history(str(run_dir / "checkpoints"))
        elapsed = max([float(h.get("seconds", 0.0)) for h in history] + [trained_s])
        model_dir = run_dir / "model"
        card = {"look": args.look, "variant": variant, "source_photos": split.source,
                "reference_photos": split.reference, "test_photos": split.test, "photos_from": str(photos),
                "extra_photos_from": [str(f) for f in args.extra_photos]}
        chosen = None
        if args.choose_on_s:
            chosen = checkpoint_on_s(run_dir / "checkpoints", source_pairs)
            export_checkpoint(chosen["sidecar"], str(model_dir), f"look-{args.look}-{variant}", "1",
                              card | {"chosen_on_s": chosen["trace"]})
            print(f"{variant}: chose iteration {chosen['iteration']} on S; S dB by iteration: {chosen['trace']}")
        else:
            export_model(result, str(model_dir), f"look-{args.look}-{variant}", "1", card=card)
        scores = scores_of(model_method(Enhancer.from_pretrained(str(model_dir))))
        lambdas = {k: v for k, v in result.metrics.items() if k.startswith("lambda_")}
        finite = all(np.isfinite(v) for v in result.metrics.values() if isinstance(v, float))
        rows[variant] = scores | {"seconds": elapsed, "iterations": result.iteration, "stable": finite,
                                  "exported_iteration": chosen["iteration"] if chosen else result.iteration,
                                  "lambda_trace": lambda_trace(history)} | lambdas

    print(f"machine: {machine()}")
    print(f"look {args.look}: S {len(split.source)}, R {len(split.reference)}, T {len(split.test)} photos "
          f"(long side {args.long_side}); {args.size} px, batch {args.batch}, {args.iterations} two-way iterations "
          f"at {args.ratio} critic steps per generator step = {args.iterations // args.ratio} generator updates; "
          f"identity / cycle weights {args.identity_weight:g} / {args.cycle_weight:g}, lr {args.lr:g}, "
          f"{args.precision}")
    print("| model | PSNR vs L(t) dB | CIEDE2000 | S: PSNR vs L(s) dB | train s | final lambda_Y / lambda_X | "
          "lambda_Y at 1/4, 1/2, 3/4, end | stable |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        lam = " / ".join(f"{r[k]:.3g}" for k in ("lambda_y", "lambda_x") if k in r) or "-"
        trace = ", ".join(f"{v:.3g}" for v in r.get("lambda_trace", [])) or "-"
        de = f"{r['ciede2000']:.2f}" if np.isfinite(r["ciede2000"]) else "-"
        print(f"| {name} | {r['psnr']:.2f} | {de} | {r['s_psnr']:.2f} | {r['seconds']:.0f} | {lam} | "
              f"{trace} | {r.get('stable', '-')} |")
    (args.work / args.look / "results.json").write_text(json.dumps(
        {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
