"""Refit the global colour affine, or an output tone curve, of a trained model with everything else frozen.

    python -m dpe_core.training.refit CONFIG MODEL --steps N --out DIR [--residual-scale S] [--lr LR]
        [--eval-every K] [--min-noharm DB] [--average-from STEP] [--name NAME --version V]
        [--head affine|post_curve] [--knots K]

The affine head (``GeneratorConfig.global_affine``: an MLP of 25 input statistics, ~25 k parameters, one 3x3 colour
matrix and offset per photo) learns in minutes what joint training with the U-Net reaches only slowly and noisily;
and a U-Net trained on family A at 64 px fixes A's own defects but can move photos with other defects the wrong
way. This stage keeps the U-Net exactly as trained (eval mode, no gradients: one forward per step, none at all at
residual scale 0), optionally scales its residual by ``residual_scale`` in [0, 1] (exact: the last conv is linear),
and trains only the affine on CONFIG's data (family A, its validation split, its loss floor ``min_mse``).

``--head post_curve`` trains ``GeneratorConfig.post_curve_knots`` instead: per-channel tone curves read from the
statistics of the input and of the frozen model's own output, added to that output (the model is widened with a
zero curve when it has none, so step 0 is the saved model). It can finish what the frozen model leaves half done
(a stretch, a gamma) without touching what it does to each pixel's neighbourhood.

Writes DIR/history.jsonl (validation metrics every eval_every steps), DIR/mlp-NNNNNN.safetensors (the head at
each), and DIR/model (the chosen one: the best validation eval_psnr among the candidates whose eval_noharm_psnr is
at least min_noharm; candidates are every saved step and, with average_from, the mean of the heads saved from
that step on). Only the validation split is read for the choice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from dpe_core.losses import psnr_loss
from dpe_core.nn import build_generator
from dpe_core.nn.generator import GlobalUNetGenerator, global_colour_affine, input_statistics, load_widened
from dpe_core.nn.modelfile import ModelInfo, load_model, save_model
from dpe_core.training.apart import check_apart_from_photos
from dpe_core.training.config import TrainConfig
from dpe_core.training.loop import build_data, evaluate

log = logging.getLogger(__name__)


def scale_residual(generator: GlobalUNetGenerator, scale: float) -> None:
    """Multiply what the U-Net adds to its input (x + out2(d), or x + M x + b per pixel) by scale, in place."""
    with torch.no_grad():
        generator.out2.weight.mul_(scale)
        generator.out2.bias.mul_(scale)


def refit_head(config: TrainConfig, model_uri: str, steps: int, out: str | Path, residual_scale: float = 1.0,
               lr: float = 1e-3, eval_every: int = 1000, average_from: int | None = None,
               min_noharm: float = 30.0, name: str = "default", version: str = "0",
               head: Literal["affine", "post_curve"] = "affine", knots: int = 17) -> dict[str, Any]:
    """Train model_uri's `head` for `steps` steps (Adam at lr, constant for the first half, then linearly to
    0) with the rest frozen; write the files named in the module docstring; return the chosen candidate's row
    {"step" | "average_from", metrics...}. head "affine" needs a model with the colour affine (ValueError
    otherwise); "post_curve" adds a zero-initialised output tone curve of `knots` knots per channel when the model
    has none (the widened model starts as the saved one). Raises DestinationError (a ValueError) when out is,
    lies inside or holds a folder of the photos, before anything is written."""
    generator, info = load_model(model_uri)
    if generator.config.input_stretch:  # the refit feeds the heads the unstretched input and its statistics
        raise ValueError(f"model {model_uri!r} stretches its input (GeneratorConfig.input_stretch); refit does not "
                         "support such models: train them with python -m dpe_core.training")
    torch.manual_seed(config.seed)
    if head == "post_curve" and generator.post_curve is None:
        widened = build_generator(generator.config.model_copy(update={"post_curve_knots": knots}))
        load_widened(widened, generator.state_dict())
        generator = widened
    mlp = generator.affine_mlp if head == "affine" else generator.post_curve
    if mlp is None:
        raise ValueError(f"model {model_uri!r} has no global colour affine (GeneratorConfig.global_affine) to refit")
    if config.threads:
        torch.set_num_threads(config.threads)
    check_apart_from_photos(config.data, str(out), "output folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history_file = out / "history.jsonl"
    history_file.unlink(missing_ok=True)  # a refit's history is its own, not appended to an earlier one's

    def record(row: dict[str, Any], weights: str) -> None:
        save_file({k: v.detach().contiguous() for k, v in mlp.state_dict().items()}, str(out / weights))
        with open(history_file, "a") as f:
            f.write(json.dumps(row) + "\n")

    scale_residual(generator, residual_scale)
    generator.eval()  # BN running statistics stay as trained (evaluate() restores this mode)
    for p in generator.parameters():
        p.requires_grad_(False)
    for p in mlp.parameters():
        p.requires_grad_(True)
    data = build_data(config)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=lr)
    schedule = config.model_copy(update={"lr": lr, "steps": steps, "decay_start": None})  # the loop's lr rule
    autocast = config.precision == "bf16"
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimiser.param_groups:
            group["lr"] = schedule.lr_at(step)
        batch = data.train.batch(config.seed, step, config.batch_size)
        stats = input_statistics(batch.x)
        if head == "post_curve":  # no parameter before the curve needs a gradient: autograd starts at the curve
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                y = generator(batch.x, stats=stats).float()
        else:
            with torch.no_grad():
                if residual_scale == 0:
                    frozen = batch.x
                else:
                    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                        full = generator(batch.x, stats=stats).float()
                    frozen = full - global_colour_affine(mlp, batch.x, stats)  # the U-Net's output alone
            y = frozen + global_colour_affine(mlp, batch.x, stats)
        loss = psnr_loss(y, batch.y, batch.y_mask, config.min_mse)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % eval_every == 0 or step == steps:
            row = {"step": step, "seconds": round(time.perf_counter() - started, 1)} | evaluate(generator,
                                                                                            data.eval_pairs)
            history.append(row)
            record(row, f"mlp-{step:06d}.safetensors")
            log.info("refit step %d/%d: validation %.2f dB, no-harm %.2f dB", step, steps, row.get("eval_psnr", 0),
                     row.get("eval_noharm_psnr", 0))
    candidates = list(history)
    if average_from is not None:
        states = [load_file(str(out / f"mlp-{r['step']:06d}.safetensors")) for r in history
                  if r["step"] >= average_from]
        if states:
            mlp.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]})
            row = {"average_from": average_from, "averaged": len(states)} | evaluate(generator, data.eval_pairs)
            record(row, "mlp-average.safetensors")
            candidates.append(row)
    chosen = choose(candidates, min_noharm)
    weights = "mlp-average" if "average_from" in chosen else f"mlp-{chosen['step']:06d}"
    mlp.load_state_dict(load_file(str(out / f"{weights}.safetensors")))
    # The base model's record stays at the top (its train / validation / test photo lists are what `dpe quality`
    # and the card read); the refit is recorded beside it.
    training = dict(info.training) | {"refit": {
        "from": str(model_uri), "from_version": info.version, "head": head, "residual_scale": residual_scale,
        "steps": steps, "lr": lr, "min_noharm": min_noharm, "chosen": chosen, "seconds": history[-1]["seconds"],
        "config": config.model_dump(mode="json")}}
    metrics = {k: v for k, v in chosen.items() if k.startswith("eval")}
    save_model(generator, str(out / "model"), ModelInfo(name=name, version=version, training=training,
                                                        metrics=metrics))
    return chosen


def choose(candidates: list[dict[str, Any]], min_noharm: float) -> dict[str, Any]:
    """The candidate with the best eval_psnr among those with eval_noharm_psnr >= min_noharm (all of them when
    none qualifies)."""
    gentle = [c for c in candidates if c.get("eval_noharm_psnr", 0.0) >= min_noharm] or candidates
    return max(gentle, key=lambda c: c.get("eval_psnr", float("-inf")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training config JSON (data, validation split, seed, batch, min_mse)")
    parser.add_argument("model", help="model URI or bundled name with a global colour affine")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--residual-scale", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--average-from", type=int)
    parser.add_argument("--min-noharm", type=float, default=30.0)
    parser.add_argument("--name", default="default")
    parser.add_argument("--version", default="0")
    parser.add_argument("--head", choices=("affine", "post_curve"), default="affine",
                        help="what to train: the colour affine, or an output tone curve (added when missing)")
    parser.add_argument("--knots", type=int, default=17, help="knots per channel of a new post_curve")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not 0.0 <= args.residual_scale <= 1.0:
        parser.error(f"--residual-scale {args.residual_scale}: must be in [0, 1]")
    config = TrainConfig.model_validate(json.loads(Path(args.config).read_text()))
    chosen = refit_head(config, args.model, args.steps, args.out, args.residual_scale, args.lr, args.eval_every,
                        args.average_from, args.min_noharm, args.name, args.version, args.head, args.knots)
    print(json.dumps(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
