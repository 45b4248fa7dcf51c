"""`dpe server --host 0.0.0.0` for browsers on other machines: the UI is sent to the API address the operator gave
(--ui-api-url, else a PREFECT_UI_API_URL already set), never to 0.0.0.0 or loopback. Real servers, stopped by
their handles."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from flows.server import free_port, healthy
from tests.conftest import REPO, dpe_command, stop_dpe_server


def _serve(args: list[str], env: dict) -> tuple[str, dict]:
    """Start `dpe server ARGS`; (its first line, /ui-settings as a browser gets it from loopback); stop it."""
    port = int(args[args.index("--port") + 1])
    server = subprocess.Popen(dpe_command("server", *args), env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # printed once the API answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as response:
            settings = json.loads(response.read())
        assert healthy(f"http://127.0.0.1:{port}/api")
    finally:
        stop_dpe_server(server, port)
    return first, settings


def test_server_on_every_interface_sends_the_ui_to_the_given_address(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_API_URL")}
    env |= {"DPE_HOME": str(tmp_path / "dpe-home"), "PREFECT_HOME": str(tmp_path / "prefect-home")}

    port = free_port()
    given = f"http://photos.example.org:{port}/api"
    first, settings = _serve(["--host", "0.0.0.0", "--port", str(port), "--ui-api-url", given], env)
    assert first.strip() == f"Prefect UI: http://photos.example.org:{port}", first
    assert settings["api_url"] == given

    port = free_port()
    user_set = f"https://prefect.studio.internal:{port}/api"  # e.g. behind a TLS proxy, exported by the operator
    first, settings = _serve(["--host", "0.0.0.0", "--port", str(port)], env | {"PREFECT_UI_API_URL": user_set})
    assert settings["api_url"] == user_set and first.strip() == f"Prefect UI: https://prefect.studio.internal:{port}"
