"""The Prefect UI as an operator uses it, in headless Chromium (Debian's chromium, driven by Python playwright):
a real Prefect server of its own on a free loopback port with its services on (as an operator runs it: task runs
recorded from events, so the run's task graph shows), a Dask cluster of one worker process reporting to it,
`dpe deploy`, the ad-hoc enhance deployment's page and its parameter form,
an ad-hoc run launched from that form (source, destination and Dask address typed in, "Submit") and run by a real
process worker on real photos (one corrupt), then the finished run's page, the runs list and every artifact
(progress, counts table, summary with failures and before/after previews) - each checked for the run's own numbers
and saved as a screenshot.

Screenshots go to $DPE_UI_SCREENSHOTS when set (docs/images/ui/ holds a committed set), else to the test's temp
folder; the test prints where. docs/ui.md says what each shows."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, dpe_command, stop_process
from tests.tasks.helpers import image_files, make_folder

CHROMIUM = Path(os.environ.get("DPE_CHROMIUM", "/usr/bin/chromium"))
# What the test asks of Chromium: no sandbox (root in CI), nothing fetched from the network, a fresh profile.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
POOL = "dpe-ui-test"
PHOTOS = {"chelsea.png": "natural/chelsea.png", "astronaut.png": "natural/astronaut.png",
          "trip/china.jpg": "natural/china.jpg", "corrupt_random.jpg": "edge/corrupt_random.jpg"}
COUNTS = "3 ok, 1 failed, 0 skipped of 4 photos"  # the run's numbers, as the artifacts' descriptions word them
NAV = {"Dashboard", "Runs", "Flows", "Deployments", "Work Pools", "Blocks", "Variables", "Automations", "Event Feed",
       "Concurrency", "Settings", "Switch to V2 UI"}


class Browser:
    """One Chromium page on a fresh profile; each view is loaded, settled, saved as a screenshot and read as text."""

    def __init__(self, ui_url: str, shots: Path):
        self.ui_url, self.shots, self.saved = ui_url, shots, []

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        assert CHROMIUM.is_file(), (f"no Chromium at {CHROMIUM}: `bash deploy/install.sh --with-browser` installs "
                                    "Debian's chromium (or set DPE_CHROMIUM)")
        self._profile = tempfile.TemporaryDirectory(prefix="dpe-ui-chromium-")
        self._playwright = sync_playwright().start()
        # playwright passes --user-data-dir itself for a persistent context: a fresh folder per test.
        self.context = self._playwright.chromium.launch_persistent_context(
            self._profile.name, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # what the page showed when the test failed, beside the other screenshots
            try:
                self.page.screenshot(path=str(self.shots / "failed.png"))
                (self.shots / "failed.txt").write_text(f"{self.page.url}\n{self.text()}")
            except Exception:
                pass
        self.context.close()
        self._playwright.stop()
        self._profile.cleanup()

    def open(self, path: str) -> None:
        self.page.goto(self.ui_url + path)
        self.page.wait_for_load_state("networkidle")

    def wait_for_text(self, *texts: str, timeout_s: float = 30) -> str:
        """The page's visible text (navigation left out) once it contains every one of texts (the UI fills its
        panes one API answer at a time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.text()
            if all(text in body for text in texts) or time.monotonic() > deadline:
                return body
            time.sleep(0.3)

    def text(self) -> str:
        return "\n".join(line for line in self.page.inner_text("body").splitlines() if line.strip() not in NAV)

    def shot(self, name: str, height: int | None = None) -> None:
        """Save the view; height enlarges the window first (the UI scrolls inside its own panes)."""
        if height:
            self.page.set_viewport_size({"width": 1400, "height": height})
        time.sleep(0.5)  # let charts and images settle
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.saved.append(path)
        if height:
            self.page.set_viewport_size({"width": 1400, "height": 1100})

    def submit_and_wait_for(self, url: re.Pattern, runs_created, timeout_s: float = 120) -> None:
        """Click the form's Submit and wait until the page is at url. If the server answered the create request
        with an error (the UI then stays on the form with an error toast), or no create request was answered 30 s
        after the click, and no run exists, click once more, as an operator would; a failure says what the server
        answered and what the page showed."""
        answers: list[tuple[str, str, int]] = []  # (method, API path, status) of every non-GET API answer

        def note(response) -> None:
            if "/api/" in response.url and response.request.method != "GET":
                answers.append((response.request.method, response.url.split("/api", 1)[1], response.status))

        self.page.on("response", note)
        try:
            clicks, deadline = 0, time.monotonic() + timeout_s
            clicked_at = time.monotonic()
            while time.monotonic() < deadline:
                refused = any(status >= 400 for _, _, status in answers)
                # A click the page never acted on (no create request 30 s later) is clicked again, as by a person.
                unanswered = time.monotonic() - clicked_at > 30 and not any(
                    "create_flow_run" in path for _, path, _ in answers)
                if clicks == 0 or (clicks == 1 and (refused or unanswered) and not runs_created()):
                    clicked_at = time.monotonic()
                    self.page.get_by_role("button", name="Submit").click()
                    clicks += 1
                if url.match(self.page.url):
                    self.page.wait_for_load_state()
                    return
                self.page.wait_for_timeout(500)
            said = [f"{method} {path} -> {status}" for method, path, status in answers]
            raise AssertionError(f"the form did not go to {url.pattern} within {timeout_s:.0f} s after {clicks} "
                                 f"Submit click(s); the server answered: {said}; console errors: {self.errors}; "
                                 f"the page at {self.page.url}:\n{self.text()[-3000:]}")
        finally:
            self.page.remove_listener("response", note)

    def fill_settled(self, values: dict[str, str], settle_s: float = 1.0, tries: int = 3) -> None:
        """Type each value into its field and press Tab (the blur a person's next click gives), wait settle_s, and
        type again any field the form has since reset. Once in a CI run the created run got the deployment's
        default destination although its field had read back as typed right after fill()."""
        for _ in range(tries):
            for label, value in values.items():
                if self.field(label).input_value() != value:
                    self.field(label).fill(value)
                    self.field(label).press("Tab")
            self.page.wait_for_timeout(settle_s * 1000)
            shown = {label: self.field(label).input_value() for label in values}
            if shown == values:
                return
        raise AssertionError(f"the form does not keep the typed values: {shown} != {values}")

    def field(self, label: str):
        """The text box of the form field labelled `label` (the Prefect UI's labels do not point at their inputs)."""
        return self.page.locator(f".schema-form-property__label:text-is('{label}')").locator(
            "xpath=ancestor::div[.//textarea][1]").locator("textarea").first


def _dpe(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(dpe_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _runs_of(deployment_id: str, source_url: str) -> list:
    """The deployment's flow runs on source_url."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id]))) if r.parameters["params"]["source_url"] == source_url]


def _run_of(deployment_id: str, source_url: str, timeout_s: float = 30) -> str:
    """The id of the deployment's one flow run on source_url (the one the form just created)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = _runs_of(deployment_id, source_url)
        if runs or time.monotonic() > deadline:
            assert len(runs) == 1, runs
            return str(runs[0].id)
        time.sleep(0.5)


def _wait_final(flow_run_id: str, timeout_s: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run
            time.sleep(1)


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory):
    """(server, Dask scheduler address): `prefect server start` with its services, the Prefect settings of this
    process pointed at it; a LocalCluster of one single-threaded worker process reporting to it."""
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cluster import torch_friendly_spawn
    from flows.server import start_local_server

    server = start_local_server(tmp_path_factory.mktemp("ui-prefect"), services=True, die_with_parent=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            with torch_friendly_spawn():
                cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=logging.WARNING, env={"PREFECT_API_URL": server.api_url})
            try:
                yield server, cluster.scheduler_address
            finally:
                cluster.close()
                from flows.cli import _drain_prefect_clients

                _drain_prefect_clients()
    finally:
        server.stop()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("DPE_UI_SCREENSHOTS") or tmp_path / "ui-screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_ui_shows_the_deployment_form_and_a_finished_runs_numbers(ui_stack, testdata, tmp_path, shots):
    started = time.perf_counter()
    prefect_server, dask_address = ui_stack
    src = make_folder(tmp_path / "photos", testdata, PHOTOS)
    dst = tmp_path / "enhanced"
    env = dict(os.environ) | {"PREFECT_API_URL": prefect_server.api_url, "PYTHONUNBUFFERED": "1",
                              "DPE_HOME": str(tmp_path / "dpe-home"), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = _dpe(["deploy", "--pool", POOL, "--json"], env)
    assert done.returncode == 0, done.stderr[-4000:]
    [adhoc] = [d for d in json.loads(done.stdout)["deployments"] if d["deployment"] == "enhance-archive/enhance-adhoc"]

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name",
                               "ui-test-worker"], env=env | {"DPE_CHECKOUT": str(REPO),
                                                             "PREFECT_WORKER_QUERY_SECONDS": "1"},
                              cwd=tmp_path, stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        with Browser(prefect_server.ui_url, shots) as ui:
            # The deployment: its defaults under Parameters ...
            ui.open(f"/deployments/deployment/{adhoc['id']}?tab=Parameters")
            page = ui.wait_for_text("s3://photo-archive/enhanced-adhoc", POOL)
            assert "enhance-adhoc" in page and POOL in page, page
            assert "s3://photo-archive/enhanced-adhoc" in page and "tcp://dask-scheduler:8786" in page, page
            ui.shot("01-deployment-parameters")

            # ... and its run form, built from the parameter model: labels, descriptions, defaults filled in.
            ui.open(f"/deployments/deployment/{adhoc['id']}/run")
            page = ui.wait_for_text("Source Url", "Min Gpu Workers (Optional)")
            for label in ("Source Url", "Dest Url", "Model (Optional)", "Mode (Optional)", "Strength (Optional)",
                          "Dask Address (Optional)", "Min Gpu Workers (Optional)"):
                assert label in page, (label, page)
            assert "Folder or bucket prefix of originals (never written)." in page
            assert "0 keeps the original, 1 the full correction" in page
            assert ui.field("Source Url").input_value() == "s3://photo-archive/uploads"
            assert ui.field("Dest Url").input_value() == "s3://photo-archive/enhanced-adhoc"
            assert ui.field("Dask Address (Optional)").input_value() == "tcp://dask-scheduler:8786"
            ui.shot("02-deployment-run-form", height=2000)

            # An ad-hoc run launched from the form, as an operator does: three fields typed in, Submit.
            ui.fill_settled({"Source Url": str(src), "Dest Url": str(dst), "Dask Address (Optional)": dask_address})
            # The form validates the parameters on the server, creates the run and goes back to the deployment
            # (slow on a loaded 2-core machine: once it took over 30 s).
            ui.submit_and_wait_for(re.compile(rf".*/deployments/deployment/{adhoc['id']}(\?.*)?$"),
                                   lambda: _runs_of(adhoc["id"], str(src)))
            submitted = ui.wait_for_text("scheduled to start")  # back on the deployment, a toast names the run
            ui.shot("03-run-submitted")
            flow_run_id = _run_of(adhoc["id"], str(src))
            run = _wait_final(flow_run_id, timeout_s=240)
            assert run.state.is_final(), f"{run.state}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
            assert run.state.name == "Completed with failures", (run.state, (tmp_path / "worker.log").read_text())
            assert f"{run.name} scheduled to start" in submitted, submitted
            params = run.parameters["params"]
            assert (params["source_url"], params["dest_url"], params["dask_address"]) == (str(src), str(dst),
                                                                                        dask_address)
            assert params["mode"] == "full" and params["model"] == "default"  # the form kept the other defaults
            assert sorted(image_files(dst)) == ["astronaut.png", "chelsea.png", "trip/china.jpg"]

            # The finished run's page: its state and message, then its artifacts, each card with the counts.
            ui.open(f"/runs/flow-run/{flow_run_id}")
            page = ui.wait_for_text("Completed with failures", "corrupt_random.jpg: corrupt photo", "Task runs",
                                    "enhance-shard-0")
            assert run.name in page and "Completed with failures" in page and "enhance-adhoc" in page, page
            assert "WARNING" in page and "corrupt_random.jpg: corrupt photo" in page, page  # the log names it
            assert "enhance-shard-0" in page and re.search(r"\b\d+ Task runs\b", page), page  # the task graph
            ui.shot("04-run-logs")
            ui.page.get_by_text("Artifacts", exact=True).first.click()
            page = ui.wait_for_text("MARKDOWN", COUNTS, "4/4 photos (100%)")
            assert {"TABLE", "PROGRESS", "MARKDOWN"} <= set(page.split()), page
            assert page.count(COUNTS) >= 1 and "4/4 photos (100%), 1 failed" in page, page
            ui.shot("05-run-artifacts")

            from tests.system.test_enhance import flow_run_artifacts

            artifacts = {a.type: a for a in flow_run_artifacts(flow_run_id)}
            assert set(artifacts) == {"progress", "table", "markdown"}

            ui.open(f"/artifacts/artifact/{artifacts['progress'].id}")
            page = ui.wait_for_text("Progress: 100%", "4/4 photos")
            assert "Progress: 100%" in page and f"Enhancing {src} -> {dst}: 4/4 photos (100%), 1 failed" in page, page
            ui.shot("06-artifact-progress")

            ui.open(f"/artifacts/artifact/{artifacts['table'].id}")
            page = ui.wait_for_text("photos listed", "run total (s)", COUNTS)
            assert COUNTS in page, page
            rows = dict(re.findall(r"^(photos listed|enhanced \(ok\)|skipped \(already done\)|failed|workers)\n\s*"
                                   r"(\S+)$", page, re.M))
            assert rows == {"photos listed": "4", "enhanced (ok)": "3", "skipped (already done)": "0",
                            "failed": "1", "workers": "1"}, page
            assert "None" not in page.split("Show raw data")[0], page  # empty figures read n/a
            ui.shot("07-artifact-counts")

            ui.open(f"/artifacts/artifact/{artifacts['markdown'].id}")
            page = ui.wait_for_text("Before / after", "trip/china.jpg", COUNTS)
            assert f"{src} -> {dst}: {COUNTS}" in page, page
            assert "3 ok, 0 skipped, 1 failed of 4 photos" in page and f"Destination: {dst}" in page, page
            assert re.search(r"^corrupt_random\.jpg\s+corrupt_random\.jpg: corrupt photo", page, re.M), page
            previews = ui.page.locator("img[src^='data:image/jpeg;base64,']")
            assert previews.count() == 6  # before and after of each enhanced photo
            widths = [previews.nth(i).evaluate("img => img.complete && img.naturalWidth") for i in range(6)]
            assert all(w and w > 0 for w in widths), widths  # decoded, not broken-image icons
            for name in ("astronaut.png", "chelsea.png", "trip/china.jpg"):
                assert re.search(rf"^{re.escape(name)}\s*$", page, re.M), (name, page)
            ui.shot("08-artifact-summary", height=1400)

            # The runs list shows the run under its state's name. (The deployment page's own Runs tab does not:
            # its default filter lists state names, and "Completed with failures" is not one of them; docs/ui.md.)
            ui.open("/runs")
            page = ui.wait_for_text(run.name, "Completed with failures")
            assert run.name in page and "Completed with failures" in page, page
            ui.shot("09-runs-list")
            assert not ui.errors, ui.errors  # no uncaught script errors on any page
    finally:
        stop_process(worker)
        worker_log.close()
    assert len(ui.saved) == 9 and all(p.stat().st_size > 10_000 for p in ui.saved)
    print(f"UI check: {time.perf_counter() - started:.1f} s; screenshots in {shots}")
