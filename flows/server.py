"""A local Prefect server (SQLite under the dpe home), started as a subprocess and stopped by its handle.

Used by the CLI's embedded default (no PREFECT_API_URL configured) and by ``dpe server``. The server is given
PREFECT_UI_API_URL (on a port other than 4200 the UI would otherwise look for :4200) and analytics off (no
network here). On Linux the child gets PR_SET_PDEATHSIG, so a CLI killed with SIGKILL does not leave it
behind. ``dpe server`` records its URL in <dpe home>/server.json so later CLI commands reuse it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    """The local Prefect server did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalServer:
    """A running server we started: stop() ends it (terminate, then kill after a grace period)."""

    process: subprocess.Popen | None
    api_url: str
    home: Path
    log_path: Path | None = None
    start_s: float = 0.0
    started_here: bool = True
    _log_file: object = field(default=None, repr=False)
    ui_api_url: str | None = None  # the API address the UI's browser uses (PREFECT_UI_API_URL), when not api_url

    @property
    def ui_url(self) -> str:
        """The UI's address for a browser (from ui_api_url when given)."""
        url = self.ui_api_url or self.api_url
        return url[: -len("/api")] if url.endswith("/api") else url

    def stop(self, grace_s: float = 15.0, keep_log: bool = False) -> None:
        """Terminate (then kill after grace_s); the log file is removed after a clean stop unless keep_log."""
        clean = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                clean = False
                self.process.kill()
                self.process.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            if clean and not keep_log and self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def loopback_for(host: str) -> str:
    """The address this machine reaches a server listening on host with (wildcards: loopback)."""
    if host in WILDCARD_HOSTS:
        return "::1" if host == "::" else "127.0.0.1"
    return host


def _http_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def server_env(home: Path, host: str, port: int, ui_api_url: str | None = None) -> dict[str, str]:
    """The server's environment: SQLite under home, analytics off, PREFECT_UI_API_URL = ui_api_url (default: the
    listening address, or loopback for a wildcard host)."""
    prefect_home = home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_API_URL")}
    return env | {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": ui_api_url or f"http://{_http_host(loopback_for(host))}:{port}/api",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }


def start_local_server(home: str | Path, port: int | None = None, host: str = "127.0.0.1", services: bool = True,
                       timeout_s: float = 180.0, die_with_parent: bool = True,
                       ui_api_url: str | None = None) -> LocalServer:
    """Start `prefect server start` on host:port (a free port by default) and wait until /api/health answers.

    ui_api_url: the API address a browser uses (PREFECT_UI_API_URL; a server on 0.0.0.0 needs the machine's
    name there for browsers elsewhere). The returned api_url is for this machine (loopback for a wildcard host)."""
    home = Path(home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port(loopback_for(host))
    api_url = f"http://{_http_host(loopback_for(host))}:{port}/api"
    log_path = home / f"prefect-server-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115  (closed by LocalServer.stop)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    if not services:
        command.append("--no-services")
    started = time.perf_counter()
    env = server_env(home, host, port, ui_api_url)
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if die_with_parent else None)
    server = LocalServer(process, api_url, home, log_path, _log_file=log_file, ui_api_url=env["PREFECT_UI_API_URL"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop(keep_log=True)
            raise ServerError(f"Prefect server exited with {process.returncode}; log: {log_path}\n"
                              f"{log_path.read_text(errors='replace')[-2000:]}")
        if healthy(api_url, timeout=1.0):
            server.start_s = time.perf_counter() - started
            return server
        time.sleep(0.25)
    server.stop(keep_log=True)
    raise ServerError(f"Prefect server not healthy after {timeout_s:.0f} s; log: {log_path}")


def record_path(home: str | Path) -> Path:
    return Path(home).expanduser() / "server.json"


def write_record(home: str | Path, server: LocalServer) -> None:
    record_path(home).write_text(json.dumps({"api_url": server.api_url, "pid": server.process.pid if server.process
                                             else None}))


def clear_record(home: str | Path, server: LocalServer) -> None:
    path = record_path(home)
    with contextlib.suppress(FileNotFoundError, ValueError):
        if json.loads(path.read_text()).get("api_url") == server.api_url:
            path.unlink()


def running_server(home: str | Path) -> str | None:
    """API URL of a healthy server recorded by `dpe server` under home, else None."""
    try:
        url = json.loads(record_path(home).read_text()).get("api_url")
    except (FileNotFoundError, ValueError):
        return None
    return url if url and healthy(url) else None
