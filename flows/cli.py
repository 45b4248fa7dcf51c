"""The `dpe` command line: enhance, ingest, train (here); models, quality, server (flows/cli_tools.py).

Exit codes: 0 every photo ok; 1 some photos failed (the run completed, see its report); 2 bad usage (invalid
options, missing source, unknown model); 3 the run itself failed (storage unreachable, cluster lost...).

Prefect API: with PREFECT_API_URL (or a Prefect profile) configured, runs report there. Otherwise a server
recorded by `dpe server` under the dpe home ($DPE_HOME or ~/.dpe) is used when it answers, else the command
starts a local one (SQLite under the dpe home), exports PREFECT_API_URL before any Dask worker starts (workers
cannot see Prefect's temporary in-process API), and stops it when the command ends.

This module imports neither prefect nor torch at import time: the environment is prepared first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from flows.params import (
    Device,
    EnhanceParams,
    IngestParams,
    Mode,
    OutputFormat,
    TrainMode,
    TrainParams,
    default_registry,
    dpe_home,
)

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3

app = typer.Typer(name="dpe", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deep Photo Enhancer: bulk-enhance photo archives, ingest datasets, train styles.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class UsageError(Exception):
    """Bad usage: reported with exit code 2."""


def _usage(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(EXIT_USAGE)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "parameters"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _quiet_logs(verbose: bool) -> None:
    """Console logs at WARNING unless verbose (flow/task logs still reach the Prefect API at INFO)."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _term_as_interrupt() -> None:
    """SIGTERM and SIGINT run the Ctrl-C clean-up (cluster and server stopped by their handles), also when the
    command was started in the background by a shell that set SIGINT to be ignored."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def prefect_api(verbose: bool = False) -> Iterator[str]:
    """Yield the Prefect API URL runs report to, starting (and finally stopping) a local server if needed."""
    _quiet_logs(verbose)
    _term_as_interrupt()
    from flows.server import running_server, start_local_server

    home = dpe_home()
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    if url:
        yield url
        return
    server = None
    url = running_server(home)
    if url is None:
        console.print(f"[dim]starting a local Prefect server (database under {home}) ...[/dim]")
        server = start_local_server(home, services=False)
        url = server.api_url
        console.print(f"[dim]Prefect UI at {server.ui_url} (ready in {server.start_s:.1f} s; stops with this "
                      f"command: run `dpe server` to keep one)[/dim]")
    os.environ["PREFECT_API_URL"] = url  # inherited by Dask worker processes started from here
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                if server is not None:
                    _drain_prefect_clients()
    finally:
        if server is not None:
            server.stop()


def _drain_prefect_clients(timeout_s: float = 20.0) -> None:
    """Send the run's last logs and events while the server we started still answers; afterwards Prefect's
    exit handlers would retry a dead server for a minute or more."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout_s)


def _run_flow(flow_fn, params) -> Any:
    """Run a flow in this process; returns its final state."""
    return flow_fn(params, return_state=True)


def _finish(state, what: str) -> dict[str, Any]:
    """The flow's result, or exit: 2 when it refused its configuration (validation, unknown model, a cluster
    that cannot run it), else 3."""
    if not state.is_completed():
        console.print(f"[red]{what} failed:[/red] {state.message}")
        try:
            error = state.result(raise_on_failure=False)
        except Exception as exc:  # the result may be unavailable
            error = exc
        from dpe_core.io.places import DestinationError
        from flows.cluster import ClusterError
        from tasks.registry import ModelNotFound

        usage = isinstance(error, ValidationError | ModelNotFound | ClusterError | DestinationError)
        raise typer.Exit(EXIT_USAGE if usage else EXIT_RUN_FAILED)
    return state.result()


# ------------------------------------------------------------------------------------------------- enhance


@app.command()
def enhance(
    src: str = typer.Argument(..., help="Folder or bucket prefix of originals (local path, s3://, any fsspec URL)."),
    dst: str = typer.Argument(..., help="Destination folder: enhanced photos at the same relative paths."),
    model: str = typer.Option("default", "--model", "-m", help="Registry name[:version], bundled name, or URI."),
    mode: Mode = typer.Option("full", help="full (guided upsampling), paper (working size), tiled."),
    strength: float = typer.Option(1.0, "--strength",
                                   help="How much of the correction to apply, 0..1 (0: the original, 1: all of it)."),
    workers: int | None = typer.Option(None, help="Local Dask workers (default: sized to the machine)."),
    dask_address: str | None = typer.Option(None, help="Use a running Dask scheduler (tcp://host:8786)."),
    dask_security: str | None = typer.Option(None, "--dask-security",
                                             help="TLS for a tls:// scheduler: YAML/JSON file with tls_ca_file, "
                                                  "tls_client_cert, tls_client_key (or a Dask config)."),
    min_gpu_workers: int | None = typer.Option(None, "--min-gpu-workers",
                                               help="Wait for this many workers declaring GPU before planning."),
    gpu_wait: float = typer.Option(600.0, "--gpu-wait", help="Seconds to wait for them, then exit 2."),
    shard_size: int | None = typer.Option(None, help="Photos per task (default: ~3 shards per worker)."),
    overwrite: bool = typer.Option(False, help="Redo photos already recorded as done."),
    include: list[str] = typer.Option(["*"], "--include", help="Glob on relative paths (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Glob to leave out (repeatable)."),
    formats: list[str] = typer.Option(["jpeg", "png", "tiff", "webp", "heic", "mpo"], "--format",
                                              help="Input formats (repeatable)."),
    output_format: OutputFormat = typer.Option("same", help="Output format."),
    quality: int = typer.Option(95, help="JPEG/WebP/HEIF quality."),
    device: Device = typer.Option("auto", help="auto: GPU workers when available."),
    torch_threads: int | None = typer.Option(None, help="torch threads per worker."),
    bf16: str | None = typer.Option(None, "--bf16",
                                    help="CPU bf16 of the net: auto (native-bf16 CPUs, kept only within 45 dB of "
                                         "fp32 on the first photos), on, off. Default: each worker's $DPE_BF16, "
                                         "else auto. A run parameter: it reaches remote workers too."),
    max_pixels: int = typer.Option(120_000_000, help="Refuse larger photos (decompression-bomb guard)."),
    decode_timeout: float = typer.Option(120.0, "--decode-timeout",
                                         help="Per-photo decode time limit in seconds (0: decode in the worker)."),
    max_inflight_mb: int = typer.Option(1024, "--max-inflight-mb",
                                        help="MiB per worker for photos read ahead / written behind the model."),
    lock_wait: float = typer.Option(0.0, "--lock-wait",
                                    help="Seconds to wait when another run holds DST (default: exit 3 at once)."),
    registry: str | None = typer.Option(None, help="Model registry URL (default $DPE_REGISTRY or ~/.dpe/models)."),
    storage_block: str | None = typer.Option(None, help="Prefect Secret block with fsspec options."),
    json_summary: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect/Dask logs."),
) -> None:
    """Enhance every photo under SRC into DST (skips what is already done; report and manifest in DST/.dpe)."""
    try:
        params = EnhanceParams(
            source_url=_absolute(src), dest_url=_absolute(dst), model=model, mode=mode, strength=strength,
            workers=workers, dask_address=dask_address, shard_size=shard_size, overwrite=overwrite, include=include,
            exclude=exclude, formats=formats,
            output_format=output_format, quality=quality, device=device, torch_threads=torch_threads,
            max_pixels=max_pixels, registry_url=registry, storage_block=storage_block,
            decode_timeout_s=decode_timeout, max_inflight_mb=max_inflight_mb, lock_wait_s=lock_wait,
            dask_security=dask_security, min_gpu_workers=min_gpu_workers, gpu_wait_s=gpu_wait, bf16=bf16)
    except ValidationError as exc:
        raise _usage(_validation_message(exc)) from None
    _precheck_source(params.source_url)
    _precheck_destinations(params.source_url, [("destination", params.dest_url)])
    _precheck_model(params.model, params.registry_url or default_registry())

    with prefect_api(verbose):
        from flows.cli_progress import RunDisplay
        from flows.enhance import enhance_archive

        # The run's UI address when it starts; a bar per photo in a terminal, else a line every N seconds.
        with RunDisplay(console, "enhance", "photos"):
            state = _run_flow(enhance_archive, params)
    summary = _finish(state, "enhance run")
    _print_enhance_summary(summary, json_summary)
    raise typer.Exit(EXIT_FAILED_FILES if summary["counts"].get("error") else EXIT_OK)


def _absolute(url: str) -> str:
    """A local path made absolute (the flow's Dask workers may run elsewhere than this shell's folder); links are
    kept as given (realpath is for comparing places, not for naming them); URLs unchanged."""
    if "://" in url or "::" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def _precheck_destinations(source_url: str, destinations: list[tuple[str, str]]) -> None:
    """Exit 2 before any work when a destination is the source, lies inside it or contains it (real paths:
    symlinks, '..', '//', file://, bind mounts; object stores: protocol family and normalised keys)."""
    from dpe_core.io.places import DestinationError, check_destinations

    try:
        check_destinations(source_url, destinations)
    except DestinationError as exc:
        raise _usage(str(exc)) from None


def _precheck_source(url: str) -> None:
    from dpe_core.io.places import Place

    try:
        place = Place.parse(url)
        fs, root = place.fs, place.root
        if not fs.exists(root):
            raise _usage(f"source {url} does not exist")
        if fs.isfile(root):
            raise _usage(f"source {url} is a file; give the folder that holds the photos")
    except typer.Exit:
        raise
    except Exception as exc:
        raise _usage(f"source {url} cannot be read: {type(exc).__name__}: {exc}") from None


def _precheck_model(reference: str, registry: str) -> None:
    from tasks.registry import ModelNotFound, resolve

    try:
        resolve(reference, registry)
    except (ModelNotFound, ValueError) as exc:
        raise _usage(str(exc)) from None


def _print_enhance_summary(summary: dict[str, Any], as_json: bool) -> None:
    counts = summary["counts"]
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    table = Table(title="dpe enhance", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    by_policy = (summary.get("not_read") or {}).get("skipped", 0)
    rows = [("photos", summary["total"]), ("enhanced", counts.get("ok", 0)),
            ("skipped (done)", counts.get("skipped", 0) - by_policy)]
    if by_policy:
        rows.append(("not read (link policy)", f"[yellow]{by_policy}[/yellow] (see the report)"))
    rows += [("failed", f"[red]{counts.get('error', 0)}[/red]" if counts.get("error") else 0),
             ("model", summary["model"]), ("mode", summary["mode"]), ("strength", summary.get("strength", 1.0)),
             ("net precision", ", ".join(summary.get("precision") or []) or "n/a"),
             ("workers", summary.get("workers")),
             ("photos/s", summary.get("photos_per_s")), ("time", f"{summary.get('total_s')} s"),
             ("first output", "n/a" if summary.get("first_output_s") is None else f"{summary['first_output_s']} s"),
             ("report", summary.get("report_url"))]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


# ------------------------------------------------------------------------------------------------- ingest


@app.command()
def ingest(
    src: str = typer.Argument(..., help="Folder or bucket prefix of photos (read only)."),
    dst: str = typer.Argument(..., help="Dataset folder: manifest.jsonl, summary.json, copies/."),
    copies: bool = typer.Option(False, help="Write training copies under DST/copies."),
    copy_size: int = typer.Option(512, help="Long side of the training copies (px)."),
    min_side: int = typer.Option(32, help="Reject photos with a shorter short side (px)."),
    max_pixels: int = typer.Option(120_000_000, help="Reject larger photos."),
    include: list[str] = typer.Option(["*"], "--include"),
    exclude: list[str] = typer.Option([], "--exclude"),
    formats: list[str] = typer.Option(["jpeg", "png", "tiff", "webp", "heic", "mpo"], "--format"),
    workers: int | None = typer.Option(None),
    dask_address: str | None = typer.Option(None),
    dask_security: str | None = typer.Option(None, "--dask-security", help="TLS file for a tls:// scheduler."),
    shard_size: int | None = typer.Option(None),
    storage_block: str | None = typer.Option(None),
    json_summary: bool = typer.Option(False, "--json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Validate photos (decodable, size, mode), hash them, summarise EXIF into DST/manifest.jsonl."""
    try:
        params = IngestParams(source_url=_absolute(src), dest_url=_absolute(dst), copies=copies, copy_size=copy_size,
                              min_side=min_side,
                              max_pixels=max_pixels, include=include, exclude=exclude, formats=formats,
                              workers=workers, dask_address=dask_address, shard_size=shard_size,
                              storage_block=storage_block, dask_security=dask_security)
    except ValidationError as exc:
        raise _usage(_validation_message(exc)) from None
    _precheck_source(params.source_url)
    _precheck_destinations(params.source_url, params.destinations())
    with prefect_api(verbose):
        from flows.cli_progress import RunDisplay
        from flows.ingest import ingest_dataset

        with RunDisplay(console, "ingest", "files"):
            state = _run_flow(ingest_dataset, params)
    summary = _finish(state, "ingest run")
    if json_summary:
        out.print_json(json.dumps(summary, default=str))
    else:
        not_read = f", {summary['skipped']} not read (link policy)" if summary.get("skipped") else ""
        console.print(f"{summary['valid']} valid, {summary['invalid']} invalid{not_read}, {summary['duplicates']} "
                      f"duplicates of {summary['total']} files; manifest {summary['manifest_url']}")
    raise typer.Exit(EXIT_FAILED_FILES if summary["invalid"] else EXIT_OK)


# ------------------------------------------------------------------------------------------------- train

_CONFIG_TO_PARAMS = {"mode", "image_size", "batch_size", "steps", "critic_steps_per_generator_step", "lr",
                     "checkpoint_url", "checkpoint_every"}
_DATA_TO_PARAMS = {"source_url", "reference_url", "input_url", "target_url", "degrade_url", "holdout",
                   "degrade_strength"}


def params_from_config_file(path: str) -> dict[str, Any]:
    """TrainParams fields from a TrainConfig JSON file (as used by `python -m dpe_core.training`)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path}: expected a JSON object")
    fields: dict[str, Any] = {k: raw.pop(k) for k in list(raw) if k in _CONFIG_TO_PARAMS}
    data = raw.pop("data", {}) or {}
    unknown_data = sorted(set(data) - _DATA_TO_PARAMS - {"storage_options"})
    if unknown_data:
        raise UsageError(f"config file {path}: unknown data fields {unknown_data}")
    if data.get("storage_options"):
        raise UsageError(f"config file {path}: storage credentials do not belong in a config file; use the "
                         "environment or --storage-block")
    fields |= {k: v for k, v in data.items() if k in _DATA_TO_PARAMS}
    fields["overrides"] = raw
    return fields


@app.command()
def train(
    name: str = typer.Option(..., "--name", "-n", help="Style name in the registry."),
    config: str | None = typer.Option(None, "--config", "-c", help="TrainConfig JSON file (options override it)."),
    mode: TrainMode | None = typer.Option(None, help="two-way (unpaired), one-way, supervised."),
    source: str | None = typer.Option(None, help="two-way: photos to enhance."),
    reference: str | None = typer.Option(None, help="two-way: reference photos of the target look."),
    input_url: str | None = typer.Option(None, "--input", help="Paired: input photos."),
    target_url: str | None = typer.Option(None, "--target", help="Paired: target photos (same names)."),
    degrade: str | None = typer.Option(None, help="Paired: photos to degrade synthetically."),
    steps: int | None = typer.Option(None),
    image_size: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    critic_steps: int | None = typer.Option(None, help="Critic steps per generator step."),
    lr: float | None = typer.Option(None),
    checkpoint: str | None = typer.Option(None, help="Checkpoint folder URL."),
    checkpoint_every: int | None = typer.Option(None),
    stop_after: int | None = typer.Option(None, help="Stop after N iterations (resume later)."),
    version: str | None = typer.Option(None, help="Version to publish (default: next integer)."),
    registry: str | None = typer.Option(None),
    work: str | None = typer.Option(None, help="Training work folder (default ~/.dpe/training)."),
    prepare_data: bool = typer.Option(True, help="Ingest the datasets first and train on clean copies."),
    workers: int | None = typer.Option(None),
    dask_address: str | None = typer.Option(None),
    dask_security: str | None = typer.Option(None, "--dask-security", help="TLS file for a tls:// scheduler."),
    device: Device = typer.Option("auto"),
    torch_threads: int | None = typer.Option(None),
    storage_block: str | None = typer.Option(None),
    json_summary: bool = typer.Option(False, "--json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a style (resumes from the last checkpoint), evaluate, publish NAME:VERSION to the registry."""
    try:
        fields = params_from_config_file(config) if config else {}
    except UsageError as exc:
        raise _usage(str(exc)) from None
    given = {"mode": mode, "source_url": source, "reference_url": reference, "input_url": input_url,
             "target_url": target_url, "degrade_url": degrade, "steps": steps, "image_size": image_size,
             "batch_size": batch_size, "critic_steps_per_generator_step": critic_steps, "lr": lr,
             "checkpoint_url": checkpoint, "checkpoint_every": checkpoint_every}
    fields |= {k: v for k, v in given.items() if v is not None}
    try:
        params = TrainParams(name=name, version=version, stop_after=stop_after, registry_url=registry, work_url=work,
                             prepare_data=prepare_data, workers=workers, dask_address=dask_address, device=device,
                             torch_threads=torch_threads, storage_block=storage_block, dask_security=dask_security,
                             **fields)
    except ValidationError as exc:
        raise _usage(_validation_message(exc)) from None
    for url in (params.source_url, params.reference_url, params.input_url, params.target_url, params.degrade_url):
        if url:
            _precheck_source(url)
    with prefect_api(verbose):
        from flows.cli_progress import RunDisplay
        from flows.train import train_style

        # The run's UI address; a bar per iteration with losses and time left in a terminal, else a line every N s.
        with RunDisplay(console, "train", "iterations"):
            state = _run_flow(train_style, params)
    summary = _finish(state, "training run")
    if json_summary:
        out.print_json(json.dumps(summary, default=str))
    else:
        console.print(state.message)
    raise typer.Exit(EXIT_OK)


# models, quality and server live in flows/cli_tools.py, deploy and run (operating deployments on a Prefect server)
# in flows/cli_ops.py (registered on this app when they are imported).
from flows import cli_ops, cli_tools  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console script convenience
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
