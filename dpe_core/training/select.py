"""Choose a run's checkpoint on its validation scores and publish it as a model.

    python -m dpe_core.training.select CHECKPOINT_FOLDER --export DIR [--metric eval_psnr] [--min-noharm DB]
    python -m dpe_core.training.select CHECKPOINT_FOLDER --average-from ITER [--also FOLDER:ITER ...] [--export DIR]

``--average-from`` averages the generator weights of every checkpoint from ITER on (stochastic weight averaging
over the learning-rate decay) and scores the average on the validation split: one checkpoint's score swings with
the last few hundred steps (+-1.5 dB between neighbours measured on v7), the average's does not.

Every checkpoint sidecar holds the validation metrics of its iteration (``extra.metrics``, written by the loop
when eval_every divides checkpoint_every). The choice uses only those (the validation split), never the test
split, which the training never reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch

from dpe_core.io.storage import read_bytes
from dpe_core.nn.modelfile import ModelInfo
from dpe_core.training.checkpoint import checkpoint_urls, list_checkpoints, load_checkpoint, read_checkpoint
from dpe_core.training.config import TrainConfig
from dpe_core.training.loop import TrainResult, build_data, evaluate, export_model
from dpe_core.training.steps import build_step


def checkpoint_scores(folder: str, **storage_options) -> list[dict[str, Any]]:
    """[{iteration, sidecar, metrics}] of every checkpoint in a folder, oldest first."""
    rows = []
    for iteration in list_checkpoints(folder, **storage_options):
        sidecar_url = checkpoint_urls(folder, iteration)[1]
        sidecar = json.loads(read_bytes(sidecar_url, **storage_options))
        rows.append({"iteration": iteration, "sidecar": sidecar_url,
                     "metrics": (sidecar.get("extra") or {}).get("metrics") or {}})
    return rows


def select_checkpoint(folder: str, metric: str = "eval_psnr", min_noharm: float | None = None,
                      **storage_options) -> dict[str, Any]:
    """The checkpoint with the highest validation `metric`, among those whose eval_noharm_psnr (dB, at training
    size) is at least min_noharm when given (falls back to all when none qualifies). Raises when none has it."""
    rows = [r for r in checkpoint_scores(folder, **storage_options) if metric in r["metrics"]]
    if not rows:
        raise ValueError(f"{folder}: no checkpoint carries the validation metric {metric!r}")
    if min_noharm is not None:
        rows = [r for r in rows if r["metrics"].get("eval_noharm_psnr", 0.0) >= min_noharm] or rows
    return max(rows, key=lambda r: (r["metrics"][metric], r["iteration"]))


def load_step(sidecar_url: str, **storage_options):
    """The run's modules rebuilt from one checkpoint (its config is in the sidecar): ``.enhancer`` is its G_X."""
    sidecar = json.loads(read_bytes(sidecar_url, **storage_options))
    step = build_step(TrainConfig.model_validate(sidecar["config"]))
    load_checkpoint(step, sidecar_url, **storage_options)
    return step


def export_checkpoint(sidecar_url: str, uri: str, name: str, version: str, card: dict[str, Any] | None = None,
                      **storage_options) -> ModelInfo:
    """Rebuild a run from a checkpoint (its config is in the sidecar) and publish its G_X as a model."""
    sidecar = json.loads(read_bytes(sidecar_url, **storage_options))
    step = load_step(sidecar_url, **storage_options)
    data = build_data(step.config)
    metrics = (sidecar.get("extra") or {}).get("metrics") or {}
    result = TrainResult(step.iteration, metrics, sidecar_url, step, data, 0.0)
    chosen = {"chosen_checkpoint": sidecar_url.rsplit("/", 1)[-1]}
    return export_model(result, uri, name, version, (card or {}) | chosen, **storage_options)


def average_checkpoints(folder: str, start: int, also: Sequence[tuple[str, int]] = (),
                        **storage_options) -> TrainResult:
    """A run whose G_X holds the mean of G_X's floating tensors (weights and BN statistics) over every checkpoint
    of `folder` with iteration >= start, scored on the run's validation pairs (metrics as the loop's).

    ``also``: (folder, start) of further runs of the same network (e.g. other seeds fine-tuned from the same model)
    whose checkpoints join the mean, each checkpoint weighing the same; the config and the validation pairs stay
    those of `folder`'s run."""
    chosen = [(folder, i) for i in list_checkpoints(folder, **storage_options) if i >= start]
    if not chosen:
        raise ValueError(f"{folder}: no checkpoint at or after iteration {start}")
    last = checkpoint_urls(folder, chosen[-1][1])[1]
    for other, other_start in also:
        more = [(other, i) for i in list_checkpoints(other, **storage_options) if i >= other_start]
        if not more:
            raise ValueError(f"{other}: no checkpoint at or after iteration {other_start}")
        chosen += more
    step = load_step(last, **storage_options)
    state = step.g_x.state_dict()
    sums: dict[str, torch.Tensor] = {}
    for run, iteration in chosen:
        _, tensors = read_checkpoint(checkpoint_urls(run, iteration)[1], **storage_options)
        for key, value in tensors.items():
            if key.startswith("g_x.") and value.is_floating_point():
                if key[4:] not in state or state[key[4:]].shape != value.shape:
                    raise ValueError(f"{run} step {iteration}: {key[4:]} does not match {folder}'s network")
                sums[key[4:]] = sums.get(key[4:], 0) + value.double()
    step.g_x.load_state_dict(state | {k: (v / len(chosen)).to(state[k].dtype) for k, v in sums.items()})
    data = build_data(step.config)
    metrics = evaluate(step.enhancer, data.eval_pairs)
    return TrainResult(step.iteration, metrics | {"averaged_checkpoints": len(chosen)}, last, step, data, 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpe_core.training.select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="checkpoint folder (fsspec URL)")
    parser.add_argument("--metric", default="eval_psnr")
    parser.add_argument("--min-noharm", type=float, default=None, help="dB at training size")
    parser.add_argument("--export", help="model URI to publish the chosen checkpoint to")
    parser.add_argument("--name", default="custom")
    parser.add_argument("--version", default="1")
    parser.add_argument("--average-from", type=int, default=None,
                        help="average G_X over the checkpoints from this iteration on (and export that)")
    parser.add_argument("--also", action="append", default=[], metavar="FOLDER:ITER",
                        help="with --average-from: add another run's checkpoints from ITER on to the mean "
                             "(same network, e.g. another seed from the same start; repeatable)")
    args = parser.parse_args(argv)
    if args.also and args.average_from is None:
        parser.error("--also needs --average-from")
    if args.average_from is not None:
        also = [(spec.rsplit(":", 1)[0], int(spec.rsplit(":", 1)[1])) for spec in args.also]
        result = average_checkpoints(args.folder, args.average_from, also)
        m = result.metrics
        print(f"average of {m['averaged_checkpoints']} checkpoints from {args.average_from}: "
              + " ".join(f"{k}={m[k]:.3f}" for k in sorted(m) if k.startswith("eval_")))
        if args.export:
            info = export_model(result, args.export, args.name, args.version,
                                {"averaged_from": args.average_from, "averaged_checkpoints": m["averaged_checkpoints"]}
                                | ({"averaged_also": args.also} if args.also else {}))
            print(f"exported {info.name} v{info.version} to {args.export}")
        return 0
    for row in checkpoint_scores(args.folder):
        m = row["metrics"]
        print(f"{row['iteration']:>8} " + " ".join(f"{k}={m[k]:.3f}" for k in sorted(m) if k.startswith("eval_")))
    best = select_checkpoint(args.folder, args.metric, args.min_noharm)
    print(f"chosen: iteration {best['iteration']} ({args.metric} {best['metrics'][args.metric]:.3f})")
    if args.export:
        info = export_checkpoint(best["sidecar"], args.export, args.name, args.version)
        print(f"exported {info.name} v{info.version} to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
