"""`dpe deploy` and `dpe run`: operate the deployments of deploy/prefect.yaml on a Prefect server.

* ``dpe deploy`` creates or updates the process work pool (with a concurrency limit) and every deployment of the
  prefect file through Prefect's own ``prefect deploy --all`` (run as a subprocess from the repository root), then
  reads them back. Rerunning it changes nothing new (deployments are upserted by flow and name, schedules
  replaced, not added). ``--check`` validates the file without a server: Prefect's prefect.yaml schema, that
  every entrypoint loads, that the default parameters validate against the flow's parameter model, schedules.
* ``dpe run DEPLOYMENT --param params.strength=0.5`` creates a flow run. Prefect merges run parameters into the
  deployment's only one level deep (an override of one field of ``params`` would drop the other defaults), so
  the deployment's parameters are read here, deep-merged with the overrides, validated against the deployment's
  schema and sent whole. ``--watch`` follows the run (its logs too) and exits like ``dpe enhance``.

Registered on ``flows.cli.app``; imports neither torch nor (at import time) prefect.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from flows.cli import EXIT_FAILED_FILES, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, UsageError, _usage, app, console, out
from flows.deploy_file import (
    REPO_ROOT,
    _pool_of,
    _with_pool,
    apply_automations,
    check_prefect_file,
    configured_api,
    ensure_work_pool,
    flow_name_of,
    load_automations,
    notification_block_id,
    run_prefect_deploy,
)

DEFAULT_PREFECT_FILE = "deploy/prefect.yaml"
DEFAULT_POOL_CONCURRENCY = 4  # flow processes at once: each only drives Dask; the workers do the photo work
# Failure classes that mean the run refused its configuration (like `dpe enhance`'s exit 2), as named in the
# message of a remote run's Failed state.
USAGE_FAILURES = ("ValidationError", "Validation of flow parameters failed", "ModelNotFound", "ClusterError",
                  "DestinationError")

# ------------------------------------------------------------------------------------------------ parameters


def parse_param(text: str) -> tuple[list[str], Any]:
    """'params.strength=0.5' -> (['params', 'strength'], 0.5). Values are JSON when they parse, else strings."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not key.strip() or any(not part for part in path):
        raise UsageError(f"--param {text!r}: expected KEY=VALUE (KEY may be dotted: params.strength=0.5)")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def overrides_from(params: list[str]) -> dict[str, Any]:
    """Nested overrides from --param options; later options win, dotted keys address nested fields."""
    out: dict[str, Any] = {}
    for text in params:
        path, value = parse_param(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """base with override merged at every depth (objects merge key by key; anything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def schema_errors(parameters: dict[str, Any], schema: dict[str, Any] | None) -> list[str]:
    """Where parameters break a deployment's parameter schema (Prefect's own validator, as the server uses)."""
    if not schema:
        return []
    from prefect.utilities.schema_tools.validation import validate

    errors = validate(parameters, schema, raise_on_error=False, preprocess=True)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or 'parameters'}: {e.message}" for e in errors]


# ------------------------------------------------------------------------------------------------ the API


@contextlib.contextmanager
def api_client() -> Iterator[Any]:
    """A sync Prefect client on configured_api() (UsageError when none is configured)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = configured_api()
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


def _open_client(stack: contextlib.ExitStack) -> Any:
    """api_client() entered on stack; no configured API exits 2."""
    try:
        return stack.enter_context(api_client())
    except UsageError as exc:
        raise _usage(str(exc)) from None


@app.command()
def deploy(
    pool: str | None = typer.Option(None, "--pool", help="Work pool (default: the one named in the prefect file)."),
    prefect_file: Path = typer.Option(Path(DEFAULT_PREFECT_FILE), "--prefect-file",
                                      help="Deployments file (relative paths: from the repository root)."),
    concurrency_limit: int = typer.Option(DEFAULT_POOL_CONCURRENCY, "--concurrency-limit", min=1,
                                          help="Flow runs the work pool runs at once."),
    alerts_block: str | None = typer.Option(None, "--alerts-block",
                                            help="Notification block TYPE/NAME: also apply deploy/automations/*.yaml "
                                                 "(alerts on runs with failed photos) sending through it."),
    check: bool = typer.Option(False, "--check", help="Only validate the file; touch no server."),
    json_output: bool = typer.Option(False, "--json", help="Print what was deployed as JSON on stdout."),
) -> None:
    """Create or update the work pool and every deployment of the prefect file (idempotent)."""
    path = prefect_file if prefect_file.is_absolute() or prefect_file.exists() else REPO_ROOT / prefect_file
    try:
        data, problems = check_prefect_file(path)
    except UsageError as exc:
        raise _usage(str(exc)) from None
    pool = pool or _pool_of(data)
    if not pool:
        problems.append("the deployments name different work pools: give --pool")
    if problems:
        for problem in problems:
            console.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(EXIT_USAGE)
    data = _with_pool(data, pool)
    automations_folder = REPO_ROOT / "deploy" / "automations"
    try:
        load_automations(automations_folder, "00000000-0000-0000-0000-000000000000")
    except Exception as exc:
        console.print(f"[red]error:[/red] {automations_folder}: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    if check:
        console.print(f"{path}: {len(data['deployments'])} deployments valid (work pool {pool}); automations valid")
        raise typer.Exit(EXIT_OK)
    with contextlib.ExitStack() as stack:
        client = _open_client(stack)
        try:
            work_pool, pool_change = ensure_work_pool(client, pool, concurrency_limit)
        except UsageError as exc:
            raise _usage(str(exc)) from None
        console.print(f"work pool {pool} ({work_pool.type}, concurrency limit {work_pool.concurrency_limit}): "
                      f"{pool_change}")
        automations: list[tuple[str, str]] = []
        if alerts_block:
            try:
                block_id = notification_block_id(client, alerts_block)
            except UsageError as exc:
                raise _usage(str(exc)) from None
            automations = apply_automations(client, load_automations(automations_folder, block_id))
            for name, change in automations:
                console.print(f"automation {name}: {change}")
        done = run_prefect_deploy(data)
        if done.returncode != 0:
            console.print(f"[red]prefect deploy failed ({done.returncode}):[/red]\n"
                          f"{(done.stdout + done.stderr)[-3000:]}")
            raise typer.Exit(EXIT_RUN_FAILED)
        rows, missing = [], []
        for spec in data["deployments"]:
            flow_name = flow_name_of(spec["entrypoint"])
            try:
                d = client.read_deployment_by_name(f"{flow_name}/{spec['name']}")
            except Exception:
                missing.append(f"{flow_name}/{spec['name']}")
                continue
            rows.append({"deployment": f"{flow_name}/{d.name}", "id": str(d.id), "work_pool": d.work_pool_name,
                         "schedules": [getattr(s.schedule, "cron", None) or str(s.schedule) for s in d.schedules],
                         "updated": d.updated.isoformat() if d.updated else None})
    if missing:  # prefect deploy skips what it cannot deploy with a warning and still exits 0
        console.print(f"[red]not deployed:[/red] {', '.join(missing)}\n{(done.stdout + done.stderr)[-3000:]}")
        raise typer.Exit(EXIT_RUN_FAILED)
    if json_output:
        out.print_json(json.dumps({"work_pool": pool, "pool": pool_change, "deployments": rows,
                                   "automations": dict(automations)}))
    else:
        table = Table(title=f"deployed to {configured_api()}")
        for column in ("deployment", "work pool", "schedules"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["deployment"], row["work_pool"], ", ".join(row["schedules"]) or "-")
        console.print(table)
        console.print(f"start a worker: DPE_CHECKOUT={REPO_ROOT} prefect worker start --pool {pool}")
    raise typer.Exit(EXIT_OK)


# ------------------------------------------------------------------------------------------------ run


def find_deployment(client, name: str):
    """A deployment by 'flow/deployment', or by deployment name alone when only one flow has it."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.exceptions import ObjectNotFound

    if "/" in name:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise UsageError(f"no deployment {name}") from None
    found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"no deployment named {name}")
    flows = {f.id: f.name for f in client.read_flows()}
    raise UsageError(f"{name} is ambiguous: " + ", ".join(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in found))


def exit_code_for(state) -> int:
    """`dpe enhance`'s exit codes for a remote run's final state."""
    from flows.outcome import FAILURES_STATE

    if state is None:
        return EXIT_RUN_FAILED
    if state.is_completed():
        return EXIT_FAILED_FILES if state.name == FAILURES_STATE else EXIT_OK
    if state.is_failed() and any(word in (state.message or "") for word in USAGE_FAILURES):
        return EXIT_USAGE
    return EXIT_RUN_FAILED


def watch_run(client, flow_run_id, poll_s: float = 2.0, show_logs: bool = True):
    """Follow a flow run until its state is final, printing state changes (and its logs); its final state."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    seen_logs: set = set()
    newest = None
    # Logs come in batches from several processes (the flow's, each Dask worker's): a late batch may carry older
    # timestamps, so each poll rereads a window before the newest log seen and prints what it has not printed.
    window = datetime.timedelta(seconds=120)

    def print_new_logs() -> int:
        nonlocal newest
        printed, offset, since = 0, 0, (newest - window) if newest else None
        while True:
            log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                                   timestamp=LogFilterTimestamp(after_=since) if since else None)
            logs = client.read_logs(log_filter=log_filter, sort=LogSort.TIMESTAMP_ASC, offset=offset, limit=200)
            for log in logs:
                if log.id not in seen_logs:
                    seen_logs.add(log.id)
                    printed += 1
                    newest = max(newest, log.timestamp) if newest else log.timestamp
                    console.print(f"{log.timestamp:%H:%M:%S} {logging.getLevelName(log.level):7} {log.message}",
                                  markup=False, highlight=False)
            offset += len(logs)
            if len(logs) < 200:
                return printed

    last_state = None
    while True:
        run = client.read_flow_run(flow_run_id)
        if show_logs:
            print_new_logs()
        state = run.state
        label = (state.name, state.message) if state else None
        if label != last_state and state is not None:
            console.print(f"state: {state.name}" + (f" - {state.message}" if state.message else ""))
            last_state = label
        if state is not None and state.is_final():
            break
        time.sleep(poll_s)
    # Logs are sent in batches (every ~2 s, Dask workers' too): collect the stragglers of a finished run.
    quiet_since = time.monotonic()
    while show_logs and time.monotonic() - quiet_since < max(6.0, 3 * poll_s):
        time.sleep(min(poll_s, 1.0))
        if print_new_logs():
            quiet_since = time.monotonic()
    return state


@app.command(name="run")
def run_command(
    deployment: str = typer.Argument(..., help="Deployment: FLOW/NAME (e.g. enhance-archive/nightly-enhance) or NAME."),
    param: list[str] = typer.Option([], "--param", "-p",
                                    help="KEY=VALUE override (repeatable); dotted keys reach nested fields "
                                         "(params.strength=0.5); values parse as JSON, else strings."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow the run to its end; exit like `dpe enhance`."),
    logs: bool = typer.Option(True, help="With --watch: print the run's logs."),
    poll: float = typer.Option(2.0, "--poll", min=0.2, help="Seconds between checks while watching."),
    json_output: bool = typer.Option(False, "--json", help="Print the flow run (id, parameters, state) as JSON."),
) -> None:
    """Start a run of a deployment with its default parameters deep-merged with --param overrides."""
    try:
        overrides = overrides_from(param)
    except UsageError as exc:
        raise _usage(str(exc)) from None
    from prefect.exceptions import PrefectHTTPStatusError

    with contextlib.ExitStack() as stack:
        client = _open_client(stack)
        try:
            found = find_deployment(client, deployment)
        except UsageError as exc:
            raise _usage(str(exc)) from None
        parameters = deep_merge(found.parameters or {}, overrides)
        errors = schema_errors(parameters, found.parameter_openapi_schema)
        if errors:
            raise _usage("parameters: " + "; ".join(errors))
        try:
            flow_run = client.create_flow_run_from_deployment(found.id, parameters=parameters)
        except PrefectHTTPStatusError as exc:  # the server's own parameter validation
            raise _usage(f"the server refused the run: {exc.response.text[:1000]}") from None
        ui = configured_api().removesuffix("/api")
        console.print(f"flow run {flow_run.name} ({flow_run.id}) of {deployment}: {ui}/runs/flow-run/{flow_run.id}")
        state = flow_run.state
        if watch:
            try:
                state = watch_run(client, flow_run.id, poll_s=poll, show_logs=logs)
            except KeyboardInterrupt:
                console.print(f"stopped watching; the run goes on: {flow_run.id}")
                raise typer.Exit(EXIT_RUN_FAILED) from None
    if json_output:
        out.print_json(json.dumps({"id": str(flow_run.id), "name": flow_run.name, "parameters": parameters,
                                   "state": state.name if state else None,
                                   "message": state.message if state else None}, default=str))
    raise typer.Exit(exit_code_for(state) if watch else EXIT_OK)
