"""The training loop: builds data from the config, resumes from the newest checkpoint, evaluates, exports.

Usable from Python (``train(config)``) and from ``dpe train`` (flows/cli.py calls the same function through
the train_style flow). Progress goes to a callback and to ``logging``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dpe_core.inference import pick_device
from dpe_core.nn.generator import load_widened
from dpe_core.nn.layers import symmetric_pad
from dpe_core.nn.modelfile import ModelInfo, load_model, save_model
from dpe_core.quality.degradations import benchmark_degradations
from dpe_core.quality.metrics import psnr
from dpe_core.training.apart import check_apart_from_photos
from dpe_core.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dpe_core.training.config import TrainConfig
from dpe_core.training.data import DegradedPairData, PairedData, PhotoSet, UnpairedData, list_images
from dpe_core.training.progress import StatusLine, append_history, write_plot
from dpe_core.training.steps import GANStep, build_step

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainingData:
    """What a run trains on and evaluates with (eval_pairs: [(input [3,h,w], target [3,h,w])], may be empty)."""

    train: UnpairedData | PairedData | DegradedPairData
    eval_pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    train_urls: list[str] = field(default_factory=list)
    holdout_urls: list[str] = field(default_factory=list)


def _split(urls: list[str], holdout: int, what: str) -> tuple[list[str], list[str]]:
    if holdout >= len(urls):
        raise ValueError(f"{what}: holdout {holdout} leaves no training photos out of {len(urls)}")
    return (urls[: len(urls) - holdout], urls[len(urls) - holdout :]) if holdout else (urls, [])


def _degraded_data(config: TrainConfig) -> TrainingData:
    """Synthetic pairs from real photos: named validation split (or the last `holdout`), test split never read."""
    d, size, so = config.data, config.image_size, config.data.storage_options
    urls = [u for u in list_images(d.degrade_url, **so) if _name(u) not in set(d.exclude_names)]
    if d.val_names:
        missing = set(d.val_names) - {_name(u) for u in urls}
        if missing:
            raise ValueError(f"{d.degrade_url}: validation photos not found: {', '.join(sorted(missing))}")
        train_urls = [u for u in urls if _name(u) not in set(d.val_names)]
        holdout_urls = [u for u in urls if _name(u) in set(d.val_names)]
    else:
        train_urls, holdout_urls = _split(urls, d.holdout, d.degrade_url)
    held_names = set(d.val_names) | set(d.exclude_names) | {_name(u) for u in d.extra_val_urls}
    leaking = sorted(_name(u) for u in d.extra_train_urls if _name(u) in held_names)
    train_names = {_name(u) for u in train_urls}
    leaking += sorted(_name(u) for u in d.extra_val_urls if _name(u) in train_names)
    if leaking:
        raise ValueError(f"photos both trained on and held out (validation or test): {', '.join(leaking)}")
    train_urls = train_urls + list(d.extra_train_urls)
    holdout_urls = holdout_urls + list(d.extra_val_urls)
    data = DegradedPairData(
        PhotoSet(train_urls, d.load_size or size, **so), config.augment, d.degrade_strength, d.clean_share,
        tuple(d.crop_scale), d.whole_share, train_size=size, target_jitter=d.target_jitter,
    )
    eval_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    if holdout_urls:
        held = DegradedPairData(PhotoSet(holdout_urls, size, **so), augment=False)
        n = len(holdout_urls)
        degradations = benchmark_degradations(n * d.eval_degradations, seed=config.seed)
        for k in range(d.eval_degradations):
            eval_pairs += held.fixed_pairs(degradations[k * n : (k + 1) * n])
        if d.clean_share > 0:  # no-harm pairs: a good photo's best output is itself
            eval_pairs += [(img, img) for img in held.wholes]
    return TrainingData(data, eval_pairs, train_urls, holdout_urls)


def _name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def build_data(config: TrainConfig) -> TrainingData:
    """Read and cache the photos named by config.data at config.image_size."""
    d, size, so = config.data, config.image_size, config.data.storage_options
    if config.mode == "two-way":
        source = list_images(d.source_url, **so)
        reference = list_images(d.reference_url, **so)
        if not source or not reference:
            raise ValueError(f"no photos under {d.source_url if not source else d.reference_url}")
        return TrainingData(
            UnpairedData(PhotoSet(source, size, **so), PhotoSet(reference, size, **so), config.augment),
            train_urls=source + reference,
        )
    if d.degrade_url is not None:
        return _degraded_data(config)
    if d.input_url is None:
        raise ValueError(f"{config.mode} training needs data.input_url + data.target_url or data.degrade_url")
    inputs = list_images(d.input_url, **so)
    targets = list_images(d.target_url, **so)
    names = {u.rsplit("/", 1)[-1].rsplit(".", 1)[0]: u for u in targets}
    pairs = [
        (u, names[u.rsplit("/", 1)[-1].rsplit(".", 1)[0]])
        for u in inputs
        if u.rsplit("/", 1)[-1].rsplit(".", 1)[0] in names
    ]
    if not pairs:
        raise ValueError(f"no input under {d.input_url} has a target with the same name under {d.target_url}")
    train_pairs, holdout_pairs = _split(pairs, d.holdout, d.input_url)
    data = PairedData(
        PhotoSet([a for a, _ in train_pairs], size, **so),
        PhotoSet([b for _, b in train_pairs], size, **so),
        config.augment,
    )
    eval_pairs = []
    if holdout_pairs:
        held = PairedData(
            PhotoSet([a for a, _ in holdout_pairs], size, **so),
            PhotoSet([b for _, b in holdout_pairs], size, **so),
            augment=False,
        )
        eval_pairs = [held.pair(i) for i in range(len(held))]
    return TrainingData(data, eval_pairs, [a for a, _ in train_pairs], [a for a, _ in holdout_pairs])


@torch.no_grad()
def evaluate(generator: torch.nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Mean PSNR (dB) at training size of clip(G(input)) and of the identity baseline against the targets.

    Pairs whose input is the target (undamaged photos) are scored apart as eval_noharm_psnr (how little the
    model changes a good photo); the others give eval_psnr and eval_identity_psnr.
    """
    if not pairs:
        return {}
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    model, identity, noharm = [], [], []
    for x, y in pairs:
        # As the Enhancer runs it (and as training saw it): symmetric-padded to a square, output cropped.
        h, w = x.shape[-2:]
        side = max(h, w)
        padded = symmetric_pad(x[None], (0, side - w, 0, side - h)).to(device)
        out = generator(padded, domain=0)[0, :, :h, :w].clamp(0, 1).cpu()
        if x is y or torch.equal(x, y):
            noharm.append(psnr(out, y))
        else:
            model.append(psnr(out, y))
            identity.append(psnr(x, y))
    generator.train(was_training)
    metrics = {"eval_noharm_psnr": sum(noharm) / len(noharm)} if noharm else {}
    if model:
        metrics |= {"eval_psnr": sum(model) / len(model), "eval_identity_psnr": sum(identity) / len(identity)}
    return metrics


@dataclass
class TrainResult:
    """Outcome of train(): final iteration, last metrics, checkpoint sidecar URL, the trained step object."""

    iteration: int
    metrics: dict[str, float]
    checkpoint: str | None
    step: GANStep
    data: TrainingData
    seconds: float
    resumed_from: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    data: TrainingData | None = None,
    stop_after: int | None = None,
    on_iteration: ProgressCallback | None = None,
) -> TrainResult:
    """Run (or resume) training to config.steps iterations.

    Resumes from the newest checkpoint under config.checkpoint_url when one exists. ``stop_after`` ends the
    call early after that many iterations of this call (used to test interruption and resume).
    ``progress`` gets each logged record (every log_every) with its status line; ``on_iteration`` gets, after
    every iteration, {"iteration", "steps", "first_iteration", "seconds"} and the latest value of every metric
    (GAN modes update the generator's losses only every N-th iteration; held-out scores every eval_every): cheap
    to build, the caller throttles what it does with it (tasks/train.py sends it on at most once a second).
    """
    if config.checkpoint_url:
        check_apart_from_photos(config.data, config.checkpoint_url, "checkpoint folder")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    data = data or build_data(config)
    step = build_step(config, device)
    resumed_from = None
    so = config.data.storage_options
    if config.checkpoint_url:
        resumed_from = latest_checkpoint(config.checkpoint_url, **so)
        if resumed_from:
            load_checkpoint(step, resumed_from, **so)
            log.info("resumed from %s at iteration %d", resumed_from, step.iteration)
    if config.init_from and not resumed_from:
        initial, _ = load_model(config.init_from, map_location=device, **so)
        load_widened(step.enhancer, initial.state_dict())
        log.info("initialised G_X from %s", config.init_from)
    step.prepare(data.train)  # after any weights are loaded: what it sets (colour priors) is not overwritten
    started = time.perf_counter()
    last_checkpoint = resumed_from
    metrics: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    unsaved: list[dict[str, Any]] = []  # records not yet appended to the checkpoint folder's history.jsonl
    status = StatusLine(config.steps, step.iteration)
    done_here = 0
    first_iteration = step.iteration
    latest: dict[str, Any] = {}  # every metric's latest value, for on_iteration
    evaluated_at: int | None = None
    while step.iteration < config.steps and (stop_after is None or done_here < stop_after):
        step.set_lr(config.lr_at(step.iteration))
        new = step.step(data.train.batch(config.seed, step.iteration, config.batch_size))
        metrics = new or metrics
        done_here += 1
        it = step.iteration
        latest |= new
        if data.eval_pairs and (it % config.eval_every == 0 or it == config.steps):
            scores = evaluate(step.enhancer, data.eval_pairs)
            evaluated_at = it
            metrics = metrics | scores
            latest |= scores
        if on_iteration:
            on_iteration({"iteration": it, "steps": config.steps, "first_iteration": first_iteration,
                          "seconds": time.perf_counter() - started} | latest)
        if it % config.log_every == 0 or it == config.steps:
            record = {"iteration": it, "lr": config.lr_at(it - 1), "seconds": time.perf_counter() - started} | metrics
            history.append(record)
            unsaved.append(record)
            line = status(record)
            log.info("%s", line)
            if progress:
                progress(record | {"status": line})
        if config.checkpoint_url and (it % config.checkpoint_every == 0 or it == config.steps):
            last_checkpoint = save_checkpoint(
                step, config.checkpoint_url, extra={"metrics": metrics}, keep=config.keep_checkpoints, **so
            )
            _save_progress(config, unsaved)
    if config.checkpoint_url and unsaved:
        _save_progress(config, unsaved)
    # The last iteration's validation already ran in the loop unless the call stopped early or had nothing to do.
    fresh = data.eval_pairs and evaluated_at != step.iteration
    final = metrics | (evaluate(step.enhancer, data.eval_pairs) if fresh else {})
    return TrainResult(
        step.iteration, final, last_checkpoint, step, data, time.perf_counter() - started, resumed_from, history
    )


def _save_progress(config: TrainConfig, unsaved: list[dict[str, Any]]) -> None:
    """Append the new records to history.jsonl and redraw progress.png beside the checkpoints; never fatal."""
    so = config.data.storage_options
    try:
        append_history(config.checkpoint_url, unsaved, **so)
        unsaved.clear()
        write_plot(config.checkpoint_url, f"{config.mode} training, {config.image_size} px", **so)
    except Exception as exc:  # progress reporting must not stop a run that is hours in
        log.warning("could not write the training history/plot under %s: %s", config.checkpoint_url, exc)


def export_model(
    result: TrainResult, uri: str, name: str, version: str, card: dict[str, Any] | None = None, **storage_options
) -> ModelInfo:
    """Publish the enhancer generator (G_X) of a run as a model file (safetensors + JSON sidecar).

    Raises DestinationError (a ValueError) when uri is, lies inside or holds a folder of the run's photos."""
    config = result.step.config
    check_apart_from_photos(config.data, uri, "model folder")
    info = ModelInfo(
        name=name,
        version=version,
        training={
            "mode": config.mode,
            "iterations": result.iteration,
            "config": config.model_dump(mode="json"),
            "train_photos": [u.rsplit("/", 1)[-1] for u in result.data.train_urls],
            "holdout_photos": [u.rsplit("/", 1)[-1] for u in result.data.holdout_urls],
            # Never read in training nor used to choose a checkpoint: `dpe quality` scores on these by default.
            "test_photos": list(config.data.exclude_names),
        }
        | (card or {}),
        metrics={k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
    )
    return save_model(result.step.enhancer, uri, info, **storage_options)
