"""The `dpe` commands around the runs: models (what is published), quality (is a model worth running),
server (a local Prefect server with its UI). Registered on ``flows.cli.app``; imports no torch.
"""

from __future__ import annotations

import json
import sys
import time

import typer
from rich.table import Table

from flows.cli import EXIT_RUN_FAILED, _term_as_interrupt, _usage, app, console, out
from flows.params import default_registry, dpe_home

# ------------------------------------------------------------------------------------------------- models


@app.command()
def models(
    registry: str | None = typer.Option(None, help="Model registry URL (default $DPE_REGISTRY or ~/.dpe/models)."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """List the styles published in the registry (and the bundled models)."""
    from tasks.registry import bundled_models, list_models

    registry = registry or default_registry()
    try:
        rows = list_models(registry)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    bundled = bundled_models()
    if json_output:
        out.print_json(json.dumps({"registry": registry, "models": rows, "bundled": bundled}, default=str))
        return
    table = Table(title=f"models in {registry}")
    for column in ("name", "version", "latest", "mode", "iterations", "published", "uri"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["version"], "*" if row["latest"] else "", str(row.get("mode") or ""),
                      str(row.get("iterations") or ""), str(row.get("published") or ""), row["uri"])
    out.print(table)
    if bundled:
        shipped = Table(title="bundled models (use by name: --model NAME)")
        for column in ("name", "version", "mode", "iterations", "look", "held-out scores", "card"):
            shipped.add_column(column, overflow="fold")
        for row in bundled:
            scores = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row["scores"].items())
            shipped.add_row(row["name"], row["version"], str(row["mode"] or ""), str(row["iterations"] or ""),
                            row["look"] or "", scores or "n/a", row["card"] or "n/a")
        out.print(shipped)


# ------------------------------------------------------------------------------------------------ quality


@app.command()
def quality(
    photos: str | None = typer.Option(None, help="Folder of undamaged photos (default: the shared natural photos, "
                                      "restricted to the first model's test split)."),
    model: list[str] = typer.Option([], help="Model name or URI (repeatable; default: the bundled 'default')."),
    family: list[str] = typer.Option([], help="Defect family A (training) or B (never trained on); default both."),
    max_side: int | None = typer.Option(None, help="Reduce photos to this long side first (default: full size)."),
    all_photos: bool = typer.Option(False, "--all-photos", help="Every photo of the folder, not the test split."),
    names: str | None = typer.Option(None, help="Comma-separated file names to score (overrides the split)."),
    mode: str = typer.Option("full", help="Enhancer mode: full, paper or tiled."),
    strength: float | None = typer.Option(None, help="Enhancer strength in [0, 1]."),
    out_dir: str | None = typer.Option(None, "--out", help="Folder for the contact sheets (PNG)."),
    draws: int = typer.Option(1, help="Fixed defect draws per photo (1: the single-draw benchmark)."),
    per_defect: bool = typer.Option(False, "--per-defect", help="Also score single defects one at a time."),
) -> None:
    """Score models against classical baselines on damaged real photos: PSNR, SSIM, CIEDE2000, no-harm."""
    import subprocess

    # The measurement needs torch; it runs as `python -m dpe_core.quality` so this process stays torch-free.
    argv = [sys.executable, "-m", "dpe_core.quality", "--mode", mode, "--draws", str(draws)]
    for flag, value in (("--photos", photos), ("--max-side", max_side), ("--strength", strength),
                        ("--out", out_dir), ("--names", names)):
        if value is not None:
            argv += [flag, str(value)]
    for reference in model:
        argv += ["--model", reference]
    for name in family:
        if name not in ("A", "B"):
            raise _usage(f"--family must be A or B, not {name!r}")
        argv += ["--family", name]
    if all_photos:
        argv.append("--all-photos")
    if per_defect:
        argv.append("--per-defect")
    raise typer.Exit(subprocess.call(argv))


# ------------------------------------------------------------------------------------------------- server


@app.command()
def server(
    port: int | None = typer.Option(None, help="Port (default 4200 when free, else any free port)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    ui_api_url: str | None = typer.Option(None, "--ui-api-url",
                                          help="API address browsers use (default: $PREFECT_UI_API_URL; with "
                                               "--host 0.0.0.0, http://<this machine's name>:PORT/api)."),
) -> None:
    """Start a local Prefect server with its UI (SQLite under the dpe home); Ctrl-C stops it."""
    import os
    import socket

    from flows.server import (
        WILDCARD_HOSTS,
        ServerError,
        clear_record,
        free_port,
        loopback_for,
        running_server,
        start_local_server,
        write_record,
    )

    home = dpe_home()
    existing = running_server(home)
    if existing:
        ui = existing[:-4] if existing.endswith("/api") else existing
        out.print(f"a dpe Prefect server is already running: {ui}")
        return
    if port is None:
        with socket.socket() as sock:
            port = 4200 if sock.connect_ex((loopback_for(host), 4200)) != 0 else free_port(loopback_for(host))
    # A browser on another machine must be sent to an address it can reach, not to 0.0.0.0 or loopback.
    ui_api_url = ui_api_url or os.environ.get("PREFECT_UI_API_URL") or (
        f"http://{socket.getfqdn()}:{port}/api" if host in WILDCARD_HOSTS else None)
    _term_as_interrupt()
    try:
        srv = start_local_server(home, port=port, host=host, services=True, ui_api_url=ui_api_url)
    except ServerError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_RUN_FAILED) from None
    write_record(home, srv)
    out.print(f"Prefect UI: {srv.ui_url}")
    out.print(f"API: {srv.ui_api_url or srv.api_url}   (export PREFECT_API_URL={srv.ui_api_url or srv.api_url} "
              f"to use it from elsewhere)")
    out.print(f"started in {srv.start_s:.1f} s; log {srv.log_path}; Ctrl-C to stop")
    sys.stdout.flush()
    try:
        while srv.process.poll() is None:
            time.sleep(0.5)
        console.print(f"[red]server exited with {srv.process.returncode}; log {srv.log_path}[/red]")
        raise typer.Exit(EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        pass
    finally:
        clear_record(home, srv)
        srv.stop()


