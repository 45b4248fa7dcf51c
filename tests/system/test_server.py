"""`dpe server`: a local Prefect server with its UI, reused by later `dpe` commands, stopped by Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from flows.server import free_port, healthy
from tests.conftest import stop_dpe_server
from tests.system.conftest import REPO, dpe_command
from tests.tasks.helpers import make_folder


def test_dpe_server_serves_the_ui_and_later_commands_report_to_it(cli_env, testdata, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    port = free_port()
    server = subprocess.Popen(dpe_command("server", "--port", str(port)), env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # printed once the API answers
        assert first.startswith(f"Prefect UI: http://127.0.0.1:{port}"), first + server.stderr.read()
        api = f"http://127.0.0.1:{port}/api"
        assert healthy(api)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as response:
            assert json.loads(response.read())["api_url"] == api  # the UI talks to this port, not :4200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()

        photos = make_folder(tmp_path / "photos", testdata, {"a.jpg": "camera/canon_s40.jpg"})
        done = subprocess.run(dpe_command("ingest", str(photos), str(tmp_path / "dataset"), "--workers", "1",
                                          "--json"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "starting a local Prefect server" not in done.stderr  # it found the running one
        request = urllib.request.Request(f"{api}/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())
        assert any(r["state_type"] == "COMPLETED" for r in runs)
    finally:
        stop_dpe_server(server, port)
    assert not (tmp_path / "dpe-home" / "server.json").exists()
