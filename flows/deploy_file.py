"""The deployment file and the server objects `dpe deploy` manages: deploy/prefect.yaml checked without a server
(Prefect's own schema, entrypoints, default parameters, schedules), the process work pool, Prefect's own
`prefect deploy --all`, and the Automations under deploy/automations. Imports neither torch nor (at import time)
prefect; used by flows/cli_ops.py.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.cli import UsageError
from flows.params import dpe_home

REPO_ROOT = Path(__file__).resolve().parent.parent


def configured_api() -> str:
    """The Prefect API these commands talk to: PREFECT_API_URL / the Prefect profile, else a server kept by
    `dpe server`. Unlike `dpe enhance` no temporary server is started: deployments live on a lasting one."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    if not url:
        from flows.server import running_server

        url = running_server(dpe_home())
    if not url:
        raise UsageError("no Prefect API configured: set PREFECT_API_URL (or a Prefect profile), or run `dpe server`")
    os.environ["PREFECT_API_URL"] = url
    return url


def flow_name_of(entrypoint: str) -> str:
    """The name of the flow an entrypoint names (imports it)."""
    return load_flow(entrypoint).name


def load_flow(entrypoint: str, root: Path = REPO_ROOT) -> Any:
    """The flow of a package.module:flow entrypoint, imported as the worker will (root on sys.path)."""
    from prefect.flows import load_flow_from_entrypoint

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return load_flow_from_entrypoint(entrypoint)

# ------------------------------------------------------------------------------------------------ prefect file


def load_prefect_file(path: Path) -> dict[str, Any]:
    """The prefect file as data (YAML anchors resolved)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list) or not data["deployments"]:
        raise UsageError(f"{path}: no deployments")
    return data


def _schedule_problems(where: str, schedules: Any) -> list[str]:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

    problems = []
    for i, entry in enumerate(schedules or []):
        entry = dict(entry or {})
        options = {k: entry.pop(k) for k in ("timezone",) if k in entry}
        for k in ("active", "parameters", "slug", "max_active_runs", "catchup", "replaces", "anchor_date"):
            entry.pop(k, None)
        try:
            if "cron" in entry:
                CronSchedule(cron=entry["cron"], **options, **{k: v for k, v in entry.items() if k == "day_or"})
            elif "interval" in entry:
                IntervalSchedule(interval=entry["interval"], **options)
            elif "rrule" in entry:
                RRuleSchedule(rrule=entry["rrule"], **options)
            else:
                problems.append(f"{where}: schedule {i}: needs cron, interval or rrule")
        except Exception as exc:  # pydantic's message names the bad cron or time zone
            detail = "; ".join(e["msg"] for e in exc.errors()) if hasattr(exc, "errors") else str(exc)
            problems.append(f"{where}: schedule {i}: {detail}")
    return problems


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    import logging

    logger = logging.getLogger(name)
    saved, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = saved


def check_prefect_file(path: Path, root: Path = REPO_ROOT) -> tuple[dict[str, Any], list[str]]:
    """(the file's data, problems): Prefect's prefect.yaml schema, each deployment's name, work pool, entrypoint
    (the flow loads), default parameters (validated by the flow as a run would be) and schedules. No server."""
    data = load_prefect_file(path)
    problems: list[str] = []
    try:
        from prefect.cli.deploy._models import PrefectYamlModel  # the schema `prefect deploy` applies

        PrefectYamlModel.model_validate(data)
    except ImportError:  # another Prefect layout: the checks below still run
        pass
    except Exception as exc:
        problems.append(f"{path}: not a valid prefect.yaml for Prefect's deploy: {exc}")
    names = set()
    for i, deployment in enumerate(data["deployments"]):
        name = deployment.get("name") or f"#{i}"
        where = f"deployment {name}"
        if not deployment.get("name"):
            problems.append(f"{where}: no name")
        elif name in names:
            problems.append(f"{where}: name used twice")
        names.add(name)
        if not (deployment.get("work_pool") or {}).get("name"):
            problems.append(f"{where}: no work_pool.name")
        entrypoint = deployment.get("entrypoint") or ""
        if ".py:" in entrypoint or ":" not in entrypoint:
            # A file path loads the flow's module under its bare file name ('enhance'), which the Dask workers
            # cannot import when they unpickle the task's run context: every shard of such a run fails.
            problems.append(f"{where}: entrypoint {entrypoint!r} must be package.module:flow (e.g. "
                            "flows.enhance:enhance_archive): Dask workers import the flow's module by that name")
            continue
        try:
            flow = load_flow(entrypoint, root)
        except Exception as exc:
            problems.append(f"{where}: entrypoint {entrypoint}: {type(exc).__name__}: {exc}")
            continue
        try:
            with _quiet("prefect.flows"):  # it logs the same error at ERROR on its own
                flow.validate_parameters(deployment.get("parameters") or {})
        except Exception as exc:
            problems.append(f"{where}: parameters: {str(exc).strip()}")
        problems += _schedule_problems(where, deployment.get("schedules"))
    return data, problems


def _pool_of(data: dict[str, Any]) -> str | None:
    pools = {(d.get("work_pool") or {}).get("name") for d in data["deployments"]}
    return pools.pop() if len(pools) == 1 else None


def _with_pool(data: dict[str, Any], pool: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for deployment in data["deployments"]:
        deployment.setdefault("work_pool", {})["name"] = pool
    return data


# ------------------------------------------------------------------------------------------------ deploy


def ensure_work_pool(client, name: str, concurrency_limit: int | None) -> tuple[Any, str]:
    """Create the process work pool (Prefect's default process job template) or set its concurrency limit;
    (pool, 'created' / 'updated' / 'unchanged'). Another type under that name is a usage error."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        pool = client.create_work_pool(WorkPoolCreate(
            name=name, type="process", concurrency_limit=concurrency_limit,
            description="dpe flow processes (CPU only; the photo work runs on the Dask workers)",
            base_job_template=ProcessWorker.get_default_base_job_template()))
        return pool, "created"
    if pool.type != "process":
        raise UsageError(f"work pool {name} exists with type {pool.type!r}, not 'process'")
    if pool.concurrency_limit == concurrency_limit:
        return pool, "unchanged"
    client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
    return client.read_work_pool(name), "updated"


def run_prefect_deploy(data: dict[str, Any], root: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`prefect --no-prompt deploy --all` on (a copy of) the prefect file, from the repository root (entrypoints
    are relative to it). The copy carries the chosen pool name: `prefect deploy --all` ignores --pool."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="dpe-deploy-") as folder:
        effective = Path(folder) / "prefect.yaml"
        effective.write_text(yaml.safe_dump(data, sort_keys=False))
        command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                   str(effective)]
        env = dict(os.environ) | {"PREFECT_API_URL": configured_api()}
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def load_automations(folder: Path, block_id: str) -> list[Any]:
    """The automations of deploy/automations/*.yaml (Prefect's `automation create --from-file` layout), their
    notification actions pointed at block_id; validated by Prefect's AutomationCore."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    automations = []
    for path in sorted(folder.glob("*.y*ml")):
        data = yaml.safe_load(path.read_text())
        items = data.get("automations", [data]) if isinstance(data, dict) else data
        for item in items:
            for action in item.get("actions", []):
                if action.get("type") == "send-notification":
                    action["block_document_id"] = block_id
            automations.append(AutomationCore.model_validate(item))
    return automations


def apply_automations(client, automations: list[Any]) -> list[tuple[str, str]]:
    """Create each automation, or update the one of the same name (so that reapplying changes nothing new)."""
    done = []
    for automation in automations:
        existing = client.read_automations_by_name(automation.name)
        if existing:
            client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:  # duplicates made by hand with `prefect automation create`
                client.delete_automation(extra.id)
            done.append((automation.name, "updated"))
        else:
            client.create_automation(automation)
            done.append((automation.name, "created"))
    return done


def notification_block_id(client, slug: str) -> str:
    """The id of a notification block given as TYPE/NAME (e.g. slack-webhook/dpe-alerts)."""
    from prefect.exceptions import ObjectNotFound

    block_type, _, name = slug.partition("/")
    if not name:
        raise UsageError(f"--alerts-block {slug!r}: expected BLOCK_TYPE/NAME, e.g. slack-webhook/dpe-alerts")
    try:
        return str(client.read_block_document_by_name(name=name, block_type_slug=block_type, include_secrets=False).id)
    except ObjectNotFound:
        raise UsageError(f"no {block_type} block named {name} (create it in the UI or with `prefect block create`)"
                         ) from None
