"""The alert of docs/operations.md fires: a Prefect server with its services (triggers, actions: the session's
server runs without them), the automation of deploy/automations/ applied by `dpe deploy --alerts-block`, a real flow
run that ends through flows.outcome.final_state with failed photos, and a webhook notification block whose
endpoint is a loopback HTTP server in this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import REPO, dpe_command

FLOW = """
from prefect import flow
from flows.outcome import final_state

@flow(name="alert-probe")
def probe():
    counts = {"ok": 47, "failed": 3, "skipped": 5, "total": 55}
    return final_state("enhance", counts, "47 enhanced, 5 skipped, 3 failed of 55 photos", {},
                       dest_url="s3://archive/enhanced", extra={"report_url": "s3://archive/enhanced/.dpe/r.jsonl"})

state = probe(return_state=True)
print("STATE", state.name)
"""


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Hook.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.mark.slow
def test_completed_with_failures_notifies_through_the_documented_automation(tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import start_local_server

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    server = start_local_server(tmp_path / "home", services=True)
    try:
        env = dict(os.environ) | {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(tmp_path / "client"),
                                  "DPE_HOME": str(tmp_path / "dpe")}
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            CustomWebhookNotificationBlock(
                name="dpe", url=f"http://127.0.0.1:{hook.server_port}/alert",
                json_data={"subject": "{{subject}}", "body": "{{body}}"}).save("dpe-alerts", overwrite=True)
        command = dpe_command("deploy", "--pool", "alerts", "--alerts-block", "custom-webhook/dpe-alerts", "--json")
        applied = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert applied.returncode == 0, applied.stderr[-3000:]
        assert json.loads(applied.stdout)["automations"] == {"dpe-photos-failed": "created"}
        time.sleep(2)  # the triggers service loads automations when they change

        ran = subprocess.run([sys.executable, "-c", FLOW], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
        assert "STATE Completed with failures" in ran.stdout, ran.stderr[-3000:]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not Hook.received:
            time.sleep(0.5)
    finally:
        server.stop()
        hook.shutdown()
    assert Hook.received, "the automation sent no notification"
    [alert] = Hook.received
    assert alert["subject"].startswith("dpe: 3 photos failed in ")
    assert "47 ok, 3 failed, 5 skipped of 55 photos" in alert["body"]
    assert "Destination: s3://archive/enhanced" in alert["body"] and "Report: s3://archive/enhanced/.dpe/r.jsonl" \
        in alert["body"]
