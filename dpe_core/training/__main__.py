"""Train from a JSON TrainConfig without Prefect: ``python -m dpe_core.training CONFIG.json [--export URI ...]``.

The same entry point runs on GPU machines that have only torch and a few libraries (no prefect/dask).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dpe_core.training.config import TrainConfig
from dpe_core.training.loop import TrainingData, build_data, export_model, train

log = logging.getLogger(__name__)


def fit_to_budget(config: TrainConfig, data: TrainingData, seconds: float, probe: int = 40) -> TrainConfig:
    """Scale config.steps (a multiple of checkpoint_every, at least one) to fill `seconds` of training.

    Times `probe` iterations (the first min(10, probe/2) discarded: allocation, autotuning) of a throwaway copy
    that saves nothing; its last iteration runs the validation pass, whose cost is charged once per eval_every.
    decay_start keeps its share of the steps.
    """
    if probe < 4:
        raise ValueError(f"a time-budget probe needs at least 4 iterations, got {probe}")
    times: list[float] = []
    probe_config = config.model_copy(update={"steps": probe, "checkpoint_url": None, "eval_every": 10**9,
                                             "log_every": 10**9})
    train(probe_config, data=data, on_iteration=lambda r: times.append(r["seconds"]))
    skip = min(10, probe // 2)
    # times[-1] also holds the validation the loop runs at its last iteration: the step rate stops one before.
    per_step = (times[-2] - times[skip - 1]) / (len(times) - 1 - skip)
    if data.eval_pairs:
        per_step += max(0.0, times[-1] - times[-2] - per_step) / config.eval_every
    every = config.checkpoint_every
    steps = max(every, int(seconds / per_step) // every * every)
    share = (config.decay_start if config.decay_start is not None else config.steps // 2) / config.steps
    log.info("time budget %.0f s: %.4f s per iteration (validation included) -> %d steps", seconds, per_step, steps)
    return config.model_copy(update={"steps": steps, "decay_start": int(steps * share)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpe_core.training", description=__doc__)
    parser.add_argument("config", help="TrainConfig as JSON (file path)")
    parser.add_argument("--export", help="model URI to publish G_X to when training ends")
    parser.add_argument("--name", default="custom")
    parser.add_argument("--version", default="1")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N iterations of this call (the lr schedule still follows 'steps')")
    parser.add_argument(
        "--time-budget", type=float, default=None, metavar="SECONDS",
        help="fit 'steps' to this much training time (a lent machine's lease): a short probe measures the seconds "
             "per iteration on this machine, then steps (and decay_start, in proportion) are scaled to fill it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a top-level config field, e.g. --set steps=2000",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(args.config) as handle:
        raw = json.load(handle)
    for item in args.set:
        key, _, value = item.partition("=")
        raw[key] = json.loads(value)
    config = TrainConfig.model_validate(raw)
    data = None
    if args.time_budget:
        data = build_data(config)
        config = fit_to_budget(config, data, args.time_budget)
    result = train(config, stop_after=args.stop_after, data=data)
    print(json.dumps({"iteration": result.iteration, "seconds": round(result.seconds, 1)} | result.metrics))
    if args.export:
        info = export_model(result, args.export, args.name, args.version)
        print(f"exported {info.name} v{info.version} to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
