"""train_style through `dpe train`: checkpoint, interruption, resume, publish, then `dpe enhance --model NAME`."""

from __future__ import annotations

import json
import subprocess

from tests.system.conftest import REPO, dpe_command
from tests.tasks.helpers import make_folder


def _dpe(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(dpe_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_train_interrupt_resume_publish_and_enhance_with_it(dask_address, cli_env, testdata, tmp_path):
    source = make_folder(tmp_path / "mine", testdata, {
        "a/kpa_pool.jpg": "natural/kpa_pool.jpg", "a/kpa_snow.jpg": "natural/kpa_snow.jpg",
        "b/kpa_jesper.jpg": "natural/kpa_jesper.jpg", "b/broken.jpg": "edge/truncated_premature_end.jpg"})
    reference = make_folder(tmp_path / "look", testdata, {
        "lomiri_sunset.jpg": "natural/lomiri_sunset.jpg", "kpa_sunset.jpg": "natural/kpa_sunset.jpg",
        "dahlia.jpg": "natural/dahlia.jpg"})
    registry, work = tmp_path / "registry", tmp_path / "work"
    # A TrainConfig file (the format `python -m dpe_core.training` reads), tiny: 64 px, 6 iterations.
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        "mode": "two-way", "data": {"source_url": str(source), "reference_url": str(reference)},
        "image_size": 64, "batch_size": 2, "steps": 6, "critic_steps_per_generator_step": 2,
        "checkpoint_every": 2, "log_every": 1, "generator": {"train_size": 64}}))
    common = ["train", "--name", "warm", "--config", str(config), "--registry", str(registry), "--work", str(work),
              "--dask-address", dask_address, "--json"]

    first = _dpe(common + ["--stop-after", "3"], cli_env)  # a time-boxed run: stops after 3 iterations
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = json.loads(first.stdout)
    assert (stopped["iteration"], stopped["finished"], stopped["published"]) == (3, False, False)
    assert stopped["checkpoint"].endswith("step-00000002.json")
    assert stopped["datasets"]["source"]["invalid"] == 1  # the broken file was reported and left out
    assert not (registry / "index.json").exists()

    second = _dpe(common, cli_env)
    assert second.returncode == 0, second.stderr[-3000:]
    trained = json.loads(second.stdout)
    assert trained["resumed_from"].endswith("step-00000002.json")
    assert (trained["iteration"], trained["finished"], trained["published"], trained["version"]) == (6, True, True,
                                                                                                     "1")
    assert {"style_distance", "style_distance_identity"} <= set(trained["metrics"])
    assert (registry / "warm" / "1" / "model.safetensors").is_file()

    listing = _dpe(["models", "--registry", str(registry), "--json"], cli_env)
    assert listing.returncode == 0
    rows = json.loads(listing.stdout)["models"]
    assert [(r["name"], r["version"], r["latest"], r["iterations"]) for r in rows] == [("warm", "1", True, 6)]

    again = _dpe(common, cli_env)  # nothing left to do: no new version
    assert again.returncode == 0 and json.loads(again.stdout)["already_published"]

    photos = make_folder(tmp_path / "to-enhance", testdata, {"x/canon_s40.jpg": "camera/canon_s40.jpg"})
    enhanced = _dpe(["enhance", str(photos), str(tmp_path / "out"), "--model", "warm", "--registry", str(registry),
                     "--dask-address", dask_address, "--json"], cli_env)
    assert enhanced.returncode == 0, enhanced.stderr[-3000:]
    summary = json.loads(enhanced.stdout)
    assert summary["model"].startswith("warm:1@") and summary["counts"]["ok"] == 1
    assert (tmp_path / "out" / "x" / "canon_s40.jpg").is_file()
