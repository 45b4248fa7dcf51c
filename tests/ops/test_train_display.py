"""What a person following `dpe train` sees for hours: the run's UI address, then its iteration, losses (generator;
critic and lambda_Y / lambda_X for the GAN; train PSNR and the held-out score for supervised), rate and time left,
moving while it trains (the training task's Dask events, tasks/train.py -> flows/progress.py TrainingProgress): a
bar in a terminal (a real pseudo-terminal here), one line every $DPE_PROGRESS_EVERY_S seconds without one (a pipe,
as under cron or nohup), the same lines in the run's Prefect logs and its progress artifact. Real photos, tiny real
training runs (64 px) on the session's Prefect server and Dask cluster, `dpe train` as a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest

from tests.conftest import REPO, dpe_command
from tests.ops.test_run_display import _flow_run_logs, _run_in_pty
from tests.tasks.helpers import make_folder

LEFT = r"(\d+\.\d\d (s/it|it/s)), about \d+ (s|min \d\d s|h \d\d min) left"


def _watch_progress_artifact(process: subprocess.Popen, stderr_file, timeout_s: float) -> list[tuple[float, str]]:
    """While the command runs: the (percentage, description) values its run's progress artifact took, as the UI
    would show them (read through the API twice a second once the run's address is printed)."""
    from tests.system.test_enhance import flow_run_artifacts

    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout_s
    run_id = None
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        if run_id is None:
            match = re.search(r"runs/flow-run/([0-9a-f-]{36})", stderr_file.read_text())
            run_id = uuid.UUID(match.group(1)) if match else None
            continue
        for artifact in flow_run_artifacts(run_id):
            if artifact.type == "progress" and (float(artifact.data), artifact.description or "") not in seen:
                seen.append((float(artifact.data), artifact.description or ""))
    return seen


def _iterations(lines: list[str], steps: int) -> list[int]:
    return [int(m) for line in lines for m in re.findall(rf"iteration (\d+)/{steps} \(", line)]


@pytest.mark.slow
def test_two_way_training_without_a_terminal_prints_iterations_losses_lambdas_and_time_left(
        dask_address, cli_env, testdata, tmp_path):
    source = make_folder(tmp_path / "mine", testdata, {
        "kpa_pool.jpg": "natural/kpa_pool.jpg", "kpa_snow.jpg": "natural/kpa_snow.jpg",
        "kpa_jesper.jpg": "natural/kpa_jesper.jpg"})
    reference = make_folder(tmp_path / "look", testdata, {
        "lomiri_sunset.jpg": "natural/lomiri_sunset.jpg", "kpa_sunset.jpg": "natural/kpa_sunset.jpg",
        "dahlia.jpg": "natural/dahlia.jpg"})
    steps = 48  # enough lines on a fast machine too: 24 gave only 3 counts with a rate at 4 it/s
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        "mode": "two-way", "data": {"source_url": str(source), "reference_url": str(reference)},
        "image_size": 64, "batch_size": 2, "steps": steps, "critic_steps_per_generator_step": 2,
        "checkpoint_every": 100, "log_every": 8, "generator": {"train_size": 64}}))
    started = time.perf_counter()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(dpe_command("train", "--name", "watched", "--config", str(config), "--registry",
                                               str(tmp_path / "registry"), "--work", str(tmp_path / "work"),
                                               "--dask-address", dask_address, "--json"),
                                   env=cli_env | {"DPE_PROGRESS_EVERY_S": "0.2"}, cwd=REPO, stdout=stdout,
                                   stderr=stderr, text=True)
        try:
            seen_in_ui = _watch_progress_artifact(process, err, timeout_s=300)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    elapsed = time.perf_counter() - started
    done = subprocess.CompletedProcess(process.args, process.returncode, out.read_text(), err.read_text())
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout)["iteration"] == steps
    # The UI's progress artifact moved while it trained, its description the same line as the terminal's.
    moving_in_ui = {p for p, d in seen_in_ui if 0 < p < 100 and re.search(rf"iteration \d+/{steps} .*{LEFT}", d)}
    assert len(moving_in_ui) >= 2, seen_in_ui

    # The run's UI address first, then the data preparation (ingest subflows), then the training's lines.
    match = re.search(r"^train run (\S+): http://127\.0\.0\.1:\d+/runs/flow-run/([0-9a-f-]{36})$", done.stderr, re.M)
    assert match, done.stderr[-3000:]
    flow_run_id = match.group(2)
    lines = [line for line in done.stderr.splitlines() if re.match(r"^\d\d:\d\d:\d\d train: ", line)]
    text = "\n".join(lines)
    assert "preparing the source photos" in text and "preparing the reference photos" in text, text
    assert text.index("preparing the reference photos") < text.index("iteration ")
    assert "ingest run" not in done.stderr  # the subflows' own announcements stay out of the train display

    # 'HH:MM:SS train: iteration 9/24 (37.5%) | G loss 7.1 | critic loss -0.3 | lambda_Y 10 | lambda_X 10 |
    #  1.02 s/it, about 15 s left': several distinct counts before the end, each with losses and time left.
    progress = [line for line in lines if re.search(rf"train: iteration \d+/{steps} ", line)]
    values = _iterations(progress, steps)
    assert values == sorted(values) and values[-1] == steps, text
    moving = [line for line, it in zip(progress, values, strict=True) if it < steps and re.search(LEFT, line)]
    assert len(set(_iterations(moving, steps))) >= 4, text
    assert all(re.search(r"\| critic loss -?\d.* \| lambda_Y \d.* \| lambda_X \d", line) for line in moving), text
    assert any("G loss " in line for line in moving), text  # the generator steps every 2nd iteration
    assert "\r" not in done.stderr and "━" not in done.stderr  # no bar drawn into a pipe

    # The same progress in the run's own logs (the UI, a worker's log) and its progress artifact at 100%.
    messages = _flow_run_logs(flow_run_id, f"progress: iteration {steps}/{steps}")
    logged = [m for m in messages if m.startswith("progress: iteration ")]
    assert len(set(_iterations(logged, steps))) >= 3, logged
    from tests.system.test_enhance import flow_run_artifacts

    [artifact] = [a for a in flow_run_artifacts(uuid.UUID(flow_run_id)) if a.type == "progress"]
    assert float(artifact.data) == 100.0 and f"iteration {steps}/{steps} (100.0%)" in artifact.description
    print(f"dpe train two-way, {steps} iterations, no terminal: {elapsed:.1f} s, {len(progress)} progress lines, "
          f"{len(set(values))} distinct iterations; {len(logged)} progress lines in the run's logs; the artifact "
          f"seen at {len(moving_in_ui)} values while it trained")


@pytest.mark.slow
def test_supervised_training_in_a_terminal_moves_its_bar_with_psnr_held_out_score_and_time_left(
        dask_address, cli_env, testdata, tmp_path):
    photos = make_folder(tmp_path / "photos", testdata, {
        "kpa_pool.jpg": "natural/kpa_pool.jpg", "kpa_snow.jpg": "natural/kpa_snow.jpg",
        "kpa_jesper.jpg": "natural/kpa_jesper.jpg", "dahlia.jpg": "natural/dahlia.jpg",
        "lomiri_sunset.jpg": "natural/lomiri_sunset.jpg"})
    steps = 240  # a fast machine (27 it/s) redraws about once a second: 120 gave only 3 moving counts
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        "mode": "supervised", "data": {"degrade_url": str(photos), "holdout": 1}, "image_size": 64,
        "batch_size": 2, "steps": steps, "checkpoint_every": 100, "log_every": 10, "eval_every": 5,
        "generator": {"train_size": 64}}))
    env = cli_env | {"COLUMNS": "220", "TERM": "xterm"}
    env.pop("DPE_PROGRESS_EVERY_S", None)
    started = time.perf_counter()
    code, screen = _run_in_pty(dpe_command("train", "--name", "bar", "--config", str(config), "--registry",
                                           str(tmp_path / "registry"), "--work", str(tmp_path / "work"),
                                           "--no-prepare-data", "--dask-address", dask_address), env, timeout_s=300)
    elapsed = time.perf_counter() - started
    assert code == 0, screen[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # colours and cursor moves off
    assert re.search(r"train run \S+: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}\r?\n", plain), plain[-3000:]
    # The bar, redrawn in place: its done/total column moves iteration by iteration, with the rate and time left
    # first, then the loss, the batch's PSNR and the held-out score.
    bars = re.findall(rf"[━╸╺]\s+(\d+)/{steps}\s+(.*?)\s+\d+:\d\d:\d\d", plain)  # up to the elapsed time
    counts = [int(n) for n, _ in bars]
    assert max(counts) == steps, plain[-3000:]
    moving = {n for n, status in bars if int(n) < steps and re.match(
        LEFT + r" \| G loss -?\d.* \| train PSNR \d+\.\d\d dB \| held-out \d+\.\d\d dB \(identity \d+\.\d\d\)", status)}
    assert len(moving) >= 4, sorted(set(counts))
    assert not re.search(r"^\d\d:\d\d:\d\d train:", screen, re.M)  # no log lines in a terminal
    print(f"dpe train supervised, {steps} iterations, in a terminal: {elapsed:.1f} s, {len(set(counts))} distinct "
          f"counts on the bar, {len(moving)} with time left and scores")
