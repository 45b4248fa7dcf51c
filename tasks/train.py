"""The training task: one long task on a (GPU) worker wrapping dpe_core.training.train / export_model.

Resumes from the newest checkpoint under the config's checkpoint_url (dpe_core does it); reports progress to
the Prefect log (each logged record's status line), live to the flow (iteration, losses, the loop's clock: a Dask
event a second, which the flow turns into the terminal's bar, its log lines and the progress artifact) and as a
plot artifact; evaluates; exports the model files when the run reached its last
iteration. The registry index is updated by the flow (storage only, no torch there).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dpe_core.io.places import artifact_key
from tasks.progress import TRAIN_REPORT_EVERY_S, Reporter
from tasks.storage_options import use_storage_block


def style_distance(result, limit: int = 16) -> dict[str, float]:
    """Two-way runs have no paired targets: compare colour statistics (per-channel mean and std in RGB) of
    G_X(source photos) and of the untouched sources with those of the reference photos. Lower is closer to
    the reference look; the identity figure is the baseline the model should beat."""
    import torch

    from dpe_core.training.data import pad_to_square

    data = result.data.train
    if not hasattr(data, "reference"):
        return {}
    generator = result.step.enhancer
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device

    def stats(images: list[torch.Tensor]) -> torch.Tensor:
        flat = torch.stack([torch.cat([im.mean(dim=(1, 2)), im.std(dim=(1, 2))]) for im in images])
        return flat.mean(dim=0)

    sources = data.source.images[:limit]
    outputs = []
    with torch.no_grad():
        for image in sources:
            _, h, w = image.shape
            padded, _ = pad_to_square(image, data.source.size)
            out = generator(padded[None].to(device), domain=0)[0, :, :h, :w].clamp(0, 1).cpu()
            outputs.append(out)
    generator.train(was_training)
    reference = stats(data.reference.images[:limit])
    return {"style_distance": float((stats(outputs) - reference).abs().mean()),
            "style_distance_identity": float((stats(sources) - reference).abs().mean())}


PLOT_ARTIFACT_EVERY_S = 60.0


def publish_plot(name: str, checkpoint_url: str, status: str, storage_options: dict) -> None:
    """Attach the run's progress.png (written beside the checkpoints by dpe_core) as a markdown artifact with
    the plot inline (the UI shows the newest version under a fixed key); reporting only, never fatal."""
    import base64

    from prefect.artifacts import create_markdown_artifact

    from dpe_core.io.storage import join_url, read_bytes
    from dpe_core.training.progress import PLOT_NAME

    try:
        png = read_bytes(join_url(checkpoint_url, PLOT_NAME), max_bytes=8 << 20, **storage_options)
    except Exception:  # not drawn yet (no checkpoint so far)
        return
    markdown = (f"# Training {name}\n\n{status}\n\n![progress](data:image/png;base64,"
                f"{base64.b64encode(png).decode()})\n\nPlot file: `{join_url(checkpoint_url, PLOT_NAME)}`")
    try:
        create_markdown_artifact(markdown, key=artifact_key("training-plot", name),
                                 description=status or f"Training {name}")
    except Exception:
        pass


# What the live progress carries besides its text (small: one event a second for hours).
_LIVE_METRICS = ("loss_generator", "loss_critic", "lambda_y", "lambda_x", "train_psnr", "eval_psnr",
                 "eval_identity_psnr", "eval_noharm_psnr")


def live_reporter(progress_key: str | None, steps: int) -> tuple[Any, Any]:
    """(on_iteration callback for dpe_core's train(), flush(last=None)): sends the run's iteration, the latest
    losses/lambdas/scores as text and values, and the loop's clock to the flow (a Dask event on tasks.progress.TOPIC,
    at most every TRAIN_REPORT_EVERY_S, and always the last iteration). Nothing is sent outside a Dask worker."""
    from dpe_core.training.progress import metrics_text

    reporter = Reporter(progress_key or "", TRAIN_REPORT_EVERY_S)
    last: dict[str, Any] = {}

    def message(state: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "train", "iteration": state["iteration"], "steps": state.get("steps", steps),
                "first_iteration": state.get("first_iteration", 0), "seconds": round(state["seconds"], 3),
                "text": metrics_text(state),
                "metrics": {k: state[k] for k in _LIVE_METRICS if isinstance(state.get(k), float)}}

    def on_iteration(state: dict[str, Any]) -> None:
        last.clear()
        last.update(state)
        final = state["iteration"] >= state.get("steps", steps)
        if reporter.due(final):
            reporter.report(message(state), force=final)

    def flush() -> None:
        if last and reporter.send is not None:
            reporter.report(message(last), force=True)

    return on_iteration, flush


@task(name="train-model", task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_model(name: str, config: dict[str, Any], stop_after: int | None = None, export_uri: str | None = None,
                version: str | None = None, card: dict[str, Any] | None = None,
                storage_block: str | None = None, progress_key: str | None = None) -> dict[str, Any]:
    """Train (or resume) to config['steps']; export to export_uri when finished. Returns a small summary.

    progress_key: the key of the flow's TrainingProgress (live iteration, losses, time left as Dask events)."""
    from dpe_core.training import TrainConfig, export_model, train

    use_storage_block(storage_block)
    logger = get_run_logger()
    cfg = TrainConfig.model_validate(config)
    last = {"plot": 0.0}

    def on_progress(record: dict[str, Any]) -> None:
        logger.info("%s", record.get("status") or record)
        now = time.monotonic()
        final = record.get("iteration") == cfg.steps
        if cfg.checkpoint_url and (now - last["plot"] > PLOT_ARTIFACT_EVERY_S or final):
            last["plot"] = now
            publish_plot(name, cfg.checkpoint_url, record.get("status", ""), cfg.data.storage_options)

    on_iteration, flush = live_reporter(progress_key, cfg.steps)
    result = train(cfg, progress=on_progress, stop_after=stop_after, on_iteration=on_iteration)
    flush()  # the last iteration of this call (a stop_after run ends before the last step)
    finished = result.iteration >= cfg.steps
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    if finished:
        metrics |= style_distance(result)
    summary: dict[str, Any] = {
        "iteration": result.iteration, "steps": cfg.steps, "finished": finished, "metrics": metrics,
        "checkpoint": result.checkpoint, "resumed_from": result.resumed_from, "seconds": round(result.seconds, 2),
        "history": result.history[-50:], "device": str(result.step.device),
    }
    if finished and export_uri:
        result.metrics = dict(result.metrics) | metrics
        info = export_model(result, export_uri, name, version or "0", card=card)
        summary["model_info"] = info.model_dump(mode="json")
        logger.info("exported %s:%s to %s", name, version, export_uri)
    return summary
