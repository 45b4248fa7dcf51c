"""Train from a JSON TrainConfig without Prefect: ``python -m dpe_core.training CONFIG.json [--export URI ...]``.

The same entry point runs on GPU machines that have only torch and a few libraries (no prefect/dask).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dpe_core.training.config import TrainConfig
from dpe_core.training.loop import export_model, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpe_core.training", description=__doc__)
    parser.add_argument("config", help="TrainConfig as JSON (file path)")
    parser.add_argument("--export", help="model URI to publish G_X to when training ends")
    parser.add_argument("--name", default="custom")
    parser.add_argument("--version", default="1")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N iterations of this call (the lr schedule still follows 'steps')")
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
    result = train(config, stop_after=args.stop_after)
    print(json.dumps({"iteration": result.iteration, "seconds": round(result.seconds, 1)} | result.metrics))
    if args.export:
        info = export_model(result, args.export, args.name, args.version)
        print(f"exported {info.name} v{info.version} to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
