"""Training progress a person can follow: status lines, history beside the checkpoints, the plot."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from dpe_core.training import DataConfig, TrainConfig
from dpe_core.training.loop import train
from dpe_core.training.progress import (
    HISTORY_NAME,
    PLOT_NAME,
    StatusLine,
    append_history,
    format_duration,
    plot_history,
    read_history,
)
from tests.core.test_training_data import _photo_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_status_line_names_losses_lambda_held_out_score_and_time_left():
    line = StatusLine(steps=1000, first_iteration=200)
    first = line({"iteration": 300, "seconds": 50.0, "loss_generator": -2.25, "loss_critic": 1.5, "lambda_y": 12.0,
                  "eval_psnr": 22.4, "eval_identity_psnr": 21.9})
    assert first.startswith("iteration 300/1000 (30.0%)")
    assert "G loss -2.25" in first and "critic loss 1.5" in first and "lambda_Y 12" in first
    assert "held-out 22.40 dB (identity 21.90)" in first
    # 100 iterations of this call took 50 s: 0.5 s/it, 700 left -> 350 s.
    assert "0.50 s/it, 5 min 50 s left" in first
    # Held-out scores come every eval_every only: the latest one stays on the line in between.
    assert "held-out 22.40 dB" in line({"iteration": 400, "seconds": 100.0, "loss_generator": -2.3})
    assert format_duration(7500) == "2 h 05 min" and format_duration(42) == "42 s"


def test_history_survives_resume_and_torn_lines(tmp_path):
    folder = str(tmp_path / "ckpt")
    append_history(folder, [{"iteration": 50, "loss_generator": 1.0}, {"iteration": 100, "loss_generator": 0.9}])
    # A resumed run repeats iteration 100 (its checkpoint was at 50), then a writer dies mid-line.
    append_history(folder, [{"iteration": 100, "loss_generator": 0.8},
                            {"iteration": 150, "loss_generator": float("nan")}])
    with open(tmp_path / "ckpt" / HISTORY_NAME, "a") as f:
        f.write('{"iteration": 200, "loss_gen')
    history = read_history(folder)
    assert [r["iteration"] for r in history] == [50, 100, 150]
    assert history[1]["loss_generator"] == 0.8 and history[2]["loss_generator"] is None  # NaN kept as null (JSON)


def test_plot_has_a_panel_per_kind_of_curve():
    history = [{"iteration": i, "loss_generator": 1 / i, "loss_critic": -i / 100, "lambda_y": 10.0 * i,
                "eval_psnr": 20 + i / 100} for i in range(10, 300, 10)]
    three = Image.open(io.BytesIO(plot_history(history)))
    one = Image.open(io.BytesIO(plot_history([{k: v for k, v in r.items() if k.startswith(("iter", "loss"))}
                                              for r in history])))
    assert three.format == "PNG" and one.format == "PNG"
    assert three.height > 2.5 * one.height  # losses, lambda, held-out PSNR vs losses only
    assert Image.open(io.BytesIO(plot_history([]))).format == "PNG"  # nothing yet: still a picture


def test_training_writes_history_and_plot_beside_its_checkpoints_and_logs_status(tmp_path, caplog):
    (tmp_path / "photos").mkdir()
    folder = _photo_folder(tmp_path / "photos")
    ckpt = tmp_path / "ckpt"
    config = TrainConfig(mode="supervised", image_size=32, batch_size=2, steps=6, lr=1e-3, eval_every=2,
                         log_every=2, checkpoint_every=3, keep_checkpoints=10, checkpoint_url=str(ckpt),
                         data=DataConfig(degrade_url=str(folder), val_names=["p1.png"], clean_share=0.2))
    seen, live = [], []
    with caplog.at_level("INFO", logger="dpe_core.training.loop"):
        train(config, progress=seen.append, stop_after=4)  # stopped, then resumed below
        train(config, progress=seen.append, on_iteration=live.append)
    # The live callback: every iteration of the resumed call (from its checkpoint at 3), each with its clock, the
    # latest loss and train PSNR, and the latest held-out score once there is one (evaluated every 2nd iteration).
    assert [(s["iteration"], s["first_iteration"], s["steps"]) for s in live] == [(4, 3, 6), (5, 3, 6), (6, 3, 6)]
    assert all(isinstance(s["loss_generator"], float) and isinstance(s["train_psnr"], float) for s in live)
    assert all("eval_psnr" in s for s in live) and live[0]["seconds"] < live[-1]["seconds"]
    history = [json.loads(line) for line in (ckpt / HISTORY_NAME).read_text().splitlines()]
    assert sorted({r["iteration"] for r in history}) == [2, 4, 6]
    assert all("eval_psnr" in r for r in history) and all("status" not in r for r in history)
    assert Image.open(ckpt / PLOT_NAME).format == "PNG"
    assert all(r["status"].startswith(f"iteration {r['iteration']}/6") for r in seen)
    assert any("held-out" in m and "left" in m for m in caplog.messages)
