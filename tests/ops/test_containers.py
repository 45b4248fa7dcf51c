"""deploy/compose.yaml and the two images (deploy/docker/cpu.Dockerfile, gpu.Dockerfile).

Always: the compose file as the engine would read it (`docker compose config` when the compose plugin is installed,
else the YAML with its anchors, merge keys and ${VAR:-default} substitutions resolved here) is checked for what
makes the stack start and work together: the services, images built from the Dockerfiles of this repository, the
server on Postgres with health checks that the dependants wait for, one API address, the deploy step before the
worker on the same pool, the scheduler the deployments name, the GPU reservation, credentials passed through. The
Dockerfiles are checked for what they copy (present in the build context, not excluded by .dockerignore), what they
install (extras of pyproject.toml, pins that agree with dpe[gpu] and deploy/prefect.yaml) and what their services
run (the commands exist; the deploy service's command validates the prefect file here).

Where a container engine answers (`docker info`), the same test then builds the images and starts the stack: Postgres,
the server (healthy), `dpe deploy` (every deployment of deploy/prefect.yaml on it), the worker (online on the pool),
the scheduler and a Dask worker (the GPU worker where the engine offers NVIDIA GPUs, else a CPU worker), and takes it
all down with its volumes. This machine and CI have only the docker client: there the test validates and says so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
import urllib.request
import uuid
from fnmatch import fnmatch
from pathlib import Path

import yaml

from flows.server import free_port
from tests.conftest import REPO, dpe_command

COMPOSE = REPO / "deploy" / "compose.yaml"
DOCKERFILES = {"dpe-cpu": REPO / "deploy" / "docker" / "cpu.Dockerfile",
               "dpe-gpu": REPO / "deploy" / "docker" / "gpu.Dockerfile"}
CONSTRAINTS = REPO / "deploy" / "docker" / "constraints.txt"
SERVICES = {"postgres", "prefect-server", "prefect-deploy", "prefect-worker", "dask-scheduler", "gpu-worker",
            "cpu-worker"}
EXTERNAL_IMAGES = {"postgres": "postgres:16-bookworm"}  # the only image not built from this repository
API = "http://prefect-server:4200/api"
PASS_THROUGH = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")


# --- the compose file as the engine reads it ---------------------------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(node, env: dict[str, str]):
    """${VAR} and ${VAR:-default} as compose substitutes them (enough for this file)."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), node)
    return node


def _normalise(service: dict) -> dict:
    """The long forms `docker compose config` prints: depends_on as a mapping, environment as a mapping."""
    service = dict(service)
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        depends = {name: {"condition": "service_started"} for name in depends}
    service["depends_on"] = depends
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    service["environment"] = env
    return service


def compose_config(env: dict[str, str]) -> tuple[dict, str]:
    """(the resolved file, who resolved it). The compose plugin when it is installed (it needs no engine)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "cpu", "config", "--format", "json"],
                              capture_output=True, text=True, env=os.environ | env, timeout=120)
        assert done.returncode == 0, done.stderr
        config = json.loads(done.stdout)
        by = "docker compose config"
    else:
        config = _interpolate(yaml.safe_load(COMPOSE.read_text()), env)  # safe_load resolves anchors and <<
        by = "PyYAML (no compose plugin here)"
    config["services"] = {name: _normalise(s) for name, s in config["services"].items()}
    return config, by


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


# --- the Dockerfiles ----------------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def _dockerignore() -> list[str]:
    path = REPO / ".dockerignore"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch(rel, p) or rel == p or rel.startswith(p.rstrip("/") + "/") for p in patterns)


def check_dockerfile(image: str, path: Path) -> dict:
    """What one Dockerfile copies and installs exists here; returns its WORKDIR, ENV and CMD."""
    steps = dockerfile_instructions(path)
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 1 and froms[0].startswith("python:${PYTHON_VERSION}-slim"), froms
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    assert args["PYTHON_VERSION"] >= "3.11"  # pyproject's requires-python
    workdir = [a for word, a in steps if word == "WORKDIR"]
    assert workdir == ["/opt/dpe"], workdir
    env: dict[str, str] = {}
    for word, a in steps:
        if word == "ENV":
            env |= dict(shlex.split(pair)[0].split("=", 1) for pair in re.findall(r"\w+=\S+", a))
    ignore = _dockerignore()
    copied: list[str] = []
    for word, a in steps:
        if word in ("COPY", "ADD"):
            assert word == "COPY", f"{path.name}: ADD fetches or unpacks; COPY is what is meant"
            *sources, _dest = shlex.split(a)
            for source in sources:
                assert (REPO / source).exists(), f"{path.name} copies {source}, which is not in the repository"
                assert not _ignored(source, ignore), f"{path.name} copies {source}, which .dockerignore excludes"
                copied.append(source)
    # The editable install needs the package's files and the readme pyproject names; the code of every package.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], "deploy"} | {
        p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"] if not p.endswith(".*")}
    assert needed <= set(copied), (needed - set(copied), path.name)
    runs = " && ".join(a for word, a in steps if word == "RUN")
    installs = re.findall(r"pip install (-c \S+ )?-e (\S+)", runs)
    assert len(installs) == 1, runs
    constraint, target = installs[0]
    assert constraint.split()[1] == str(CONSTRAINTS.relative_to(REPO)), constraint
    extras = re.findall(r"\[(.+?)\]", target.replace("${DPE_EXTRA}", args.get("DPE_EXTRA", "")))
    for extra in extras:
        assert extra in project["project"]["optional-dependencies"], f"{path.name}: no extra {extra!r} in pyproject"
    if image == "dpe-gpu":
        assert extras == ["gpu"] and "/cu" in args["TORCH_INDEX_URL"], (extras, args)  # CUDA torch, dask-cuda
        assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"  # utility: nvidia-smi for gpu-worker.sh
    else:
        assert args["TORCH_INDEX_URL"].endswith("/whl/cpu") and not extras
    cmd = [a for word, a in steps if word == "CMD"]
    return {"workdir": workdir[0], "env": env, "cmd": json.loads(cmd[-1]) if cmd else None, "copied": copied}


def test_pins_of_both_images_agree_with_dpe_gpu_and_the_prefect_file():
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    gpu = project["project"]["optional-dependencies"]["gpu"]
    dask_pin = next(d for d in gpu if d.startswith("dask[distributed]"))
    low, high = re.search(r">=([\d.]+),<([\d.]+)", dask_pin).groups()
    assert pins["dask"] == pins["distributed"] == low, (pins, dask_pin)
    assert tuple(map(int, low.split("."))) < tuple(map(int, high.split(".")))
    assert pins["prefect"] == yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["prefect-version"]


def test_compose_file_and_images_start_the_whole_stack(tmp_path):
    ports = {"DPE_PREFECT_PORT": str(free_port()), "DPE_DASK_PORT": str(free_port()),
             "DPE_DASK_DASHBOARD_PORT": str(free_port())}
    config, resolved_by = compose_config(ports)
    services = config["services"]
    assert set(services) == SERVICES, set(services)
    images = {name: check_dockerfile(name, path) for name, path in DOCKERFILES.items()}

    # Every image is built here (one service builds each, from the repository root) or is the pinned Postgres.
    built = {}
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            context = Path(build["context"] if Path(build["context"]).is_absolute() else COMPOSE.parent /
                           build["context"]).resolve()
            assert context == REPO, (name, context)
            dockerfile = (context / build["dockerfile"]).resolve()
            image = service["image"].split(":")[0]
            assert DOCKERFILES[image] == dockerfile, (name, dockerfile)
            assert image not in built, f"{image} built by {built.get(image)} and {name}"
            built[image] = name
    assert set(built) == set(DOCKERFILES), built
    for name, service in services.items():
        image = service["image"]
        assert image == EXTERNAL_IMAGES.get(name) or image.split(":")[0] in built, (name, image)

    # Postgres, healthy before the server starts on it; the server healthy before anything talks to it.
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    server = services["prefect-server"]
    assert _command(server)[:3] == ["prefect", "server", "start"] and "0.0.0.0" in _command(server)
    port = _command(server)[_command(server).index("--port") + 1]
    db = re.fullmatch(r"postgresql\+asyncpg://(\w+):(\w+)@postgres:5432/(\w+)",
                      server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert db and db.groups() == (pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_PASSWORD"],
                                  pg["environment"]["POSTGRES_DB"]), server["environment"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert f"localhost:{port}/api/health" in " ".join(server["healthcheck"]["test"])
    assert server["environment"]["PREFECT_UI_API_URL"] == f"http://localhost:{port}/api"  # a browser on this host
    published = {str(p["target"]) if isinstance(p, dict) else p.split(":")[-1]: p for p in server["ports"]}
    assert port in published and ports["DPE_PREFECT_PORT"] in json.dumps(published[port]), server["ports"]
    assert API == f"http://prefect-server:{port}/api"

    # Everything that runs flows or tasks reports to that API (the scheduler does not talk to Prefect).
    for name in ("prefect-deploy", "prefect-worker", "gpu-worker", "cpu-worker"):
        service = services[name]
        assert service["environment"]["PREFECT_API_URL"] == API, name
        assert service["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false", name
    deploy, worker = services["prefect-deploy"], services["prefect-worker"]
    assert deploy["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert deploy["restart"] == "no"
    assert worker["depends_on"]["prefect-deploy"]["condition"] == "service_completed_successfully"
    pool = _command(deploy)[_command(deploy).index("--pool") + 1]
    assert _command(worker)[:3] == ["prefect", "worker", "start"]
    assert _command(worker)[_command(worker).index("--pool") + 1] == pool
    checkout = images["dpe-cpu"]["workdir"]
    assert worker["environment"]["DPE_CHECKOUT"] == checkout == images["dpe-cpu"]["env"]["DPE_CHECKOUT"]
    # The deploy service's command, run here against the same prefect file the image copies: it validates.
    check = subprocess.run(dpe_command(*_command(deploy)[1:], "--check"), cwd=REPO, capture_output=True, text=True,
                           timeout=300, env=os.environ | {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert check.returncode == 0, check.stdout + check.stderr

    # The scheduler the deployments send work to, healthy before the worker and the Dask workers start.
    scheduler = services["dask-scheduler"]
    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    addresses = {d["parameters"]["params"].get("dask_address") for d in spec["deployments"]}
    sched_port = _command(scheduler)[_command(scheduler).index("--port") + 1]
    assert addresses == {f"tcp://dask-scheduler:{sched_port}"}, addresses
    assert f"('localhost', {sched_port})" in " ".join(scheduler["healthcheck"]["test"])
    for name in ("prefect-worker", "gpu-worker", "cpu-worker"):
        assert services[name]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy", name
        assert any(str(v).endswith(":/data") or (isinstance(v, dict) and v.get("target") == "/data")
                   for v in services[name]["volumes"]), name

    # The GPU worker: the CUDA image, every GPU reserved, gpu-worker.sh (in the image) on the scheduler, credentials
    # passed through from the shell, dpe's Dask config.
    gpu = services["gpu-worker"]
    assert gpu["image"].startswith("dpe-gpu:")
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and (
        device.get("count") in ("all", -1) or device.get("device_ids")), device
    command = _command(gpu)
    assert command[:2] == ["bash", "deploy/dask/gpu-worker.sh"] and command[2] == f"tcp://dask-scheduler:{sched_port}"
    assert (REPO / command[1]).is_file() and "deploy" in images["dpe-gpu"]["copied"]
    assert images["dpe-gpu"]["cmd"] == command  # the image alone starts the same
    dask_config = f"{checkout}/deploy/dask/dask.yaml"
    assert gpu["environment"]["DASK_CONFIG"] == images["dpe-gpu"]["env"]["DASK_CONFIG"] == dask_config
    raw = yaml.safe_load(COMPOSE.read_text())["services"]  # as written: `docker compose config` fills them in
    for name in ("prefect-worker", "gpu-worker", "cpu-worker"):
        env = raw[name]["environment"]
        assert all(key in env and env[key] is None for key in PASS_THROUGH), (name, env)  # no value: from the shell
    cpu = services["cpu-worker"]
    assert cpu["profiles"] == ["cpu"] and "GPU" not in " ".join(_command(cpu))
    for name, service in services.items():  # the programs the services run are installed in their image
        program = _command(service)[0] if "command" in service else None
        assert program in (None, "prefect", "dpe", "dask", "bash"), (name, program)
    print(f"compose file resolved by {resolved_by}; checked: {', '.join(p.name for p in DOCKERFILES.values())}")

    docker = shutil.which("docker")
    engine = docker and subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0
    if not engine:
        print("no container engine here (`docker info` failed): compose file and Dockerfiles validated, not run")
        return
    _build_and_start(docker, ports, tmp_path)


def _build_and_start(docker: str, ports: dict[str, str], tmp_path: Path) -> None:
    """Build both images, start the stack under a project name of its own, check it works, take it all down."""
    info = subprocess.run([docker, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    gpus = "nvidia" in info.stdout
    project = f"dpe-test-{uuid.uuid4().hex[:8]}"
    base = [docker, "compose", "-f", str(COMPOSE), "-p", project]
    env = os.environ | ports
    if gpus:
        workers = ["gpu-worker"]
    else:  # no NVIDIA runtime: the CPU worker proves the Dask side; the GPU image is still built
        workers = ["cpu-worker"]
        base += ["--profile", "cpu"]
    started = time.perf_counter()
    try:
        build = subprocess.run([*base, "build"], env=env, capture_output=True, text=True, timeout=3600)
        assert build.returncode == 0, build.stderr[-5000:]
        # `up` starts each service once what it depends on is healthy (or, for the deploy step, done); the one-shot
        # deploy step is pulled in by the worker.
        up = subprocess.run([*base, "up", "-d", "prefect-worker", *workers], env=env, capture_output=True, text=True,
                            timeout=1200)

        def logs() -> str:
            return subprocess.run([*base, "logs", "--no-color"], env=env, capture_output=True, text=True).stdout[-6000:]

        assert up.returncode == 0, up.stderr[-3000:] + logs()
        api = f"http://127.0.0.1:{ports['DPE_PREFECT_PORT']}/api"
        deploy_state = subprocess.run([*base, "ps", "-a", "--format", "json", "prefect-deploy"], env=env,
                                      capture_output=True, text=True).stdout
        assert '"ExitCode":0' in deploy_state.replace(" ", ""), deploy_state + logs()

        def post(path: str, body: dict):
            request = urllib.request.Request(api + path, data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)

        spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
        deployments = {d["name"] for d in post("/deployments/filter", {})}
        assert deployments == {d["name"] for d in spec["deployments"]}, deployments
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            online = [w for w in post("/work_pools/dpe/workers/filter", {}) if w.get("status") == "ONLINE"]
            if online:
                break
            time.sleep(2)
        assert online, logs()
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{ports['DPE_DASK_PORT']}", timeout=60) as client:
            client.wait_for_workers(1, timeout=300)
            resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        if gpus:
            assert all(r.get("GPU") == 1 for r in resources), resources
        print(f"engine: built and started {project} in {time.perf_counter() - started:.0f} s; "
              f"{len(deployments)} deployments, worker online, Dask workers {resources}")
    finally:
        subprocess.run([*base, "down", "-v", "--remove-orphans"], env=env, capture_output=True, timeout=300)
