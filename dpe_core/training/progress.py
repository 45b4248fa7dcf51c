"""Training progress a person can follow for hours: a status line, a history file and a plot beside the checkpoints.

Each logged record of ``train()`` ({"iteration", "lr", "seconds", losses, lambdas, held-out scores}) is
- turned into one status line (``status_line``): iteration, share done, generator/critic losses, lambda(s), the
  latest held-out PSNR beside the identity's, seconds per iteration and time left (from this call's own rate);
- appended to ``history.jsonl`` in the checkpoint folder (a resumed run keeps appending; a record repeated after
  a resume replaces the older one when read);
- drawn, at each checkpoint, into ``progress.png`` there: losses, lambda(s) and held-out PSNR over iterations.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from dpe_core.io.storage import filesystem, join_url, write_bytes_atomic

HISTORY_NAME = "history.jsonl"
PLOT_NAME = "progress.png"
# Shown in the status line when present, in this order (GAN and supervised runs log different keys).
_LINE_KEYS = (("loss_generator", "G loss"), ("loss_critic", "critic loss"), ("lambda_y", "lambda_Y"),
              ("lambda_x", "lambda_X"))


def format_duration(seconds: float) -> str:
    """Seconds -> '2 h 05 min', '7 min 30 s', '42 s'."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def metrics_text(record: dict[str, Any], held_out: dict[str, Any] | None = None) -> str:
    """The losses, lambda(s), train PSNR and held-out score of a record as one ' | '-joined text (what the status
    line and the live progress of `dpe train` show between the iteration count and the time left)."""
    held_out = held_out if held_out is not None else record
    parts = [f"{label} {record[key]:.4g}" for key, label in _LINE_KEYS if isinstance(record.get(key), float)]
    if isinstance(record.get("train_psnr"), float):  # supervised: the batch's PSNR (what its loss maximises)
        parts.append(f"train PSNR {record['train_psnr']:.2f} dB")
    if isinstance(held_out.get("eval_psnr"), float):
        held = f"held-out {held_out['eval_psnr']:.2f} dB"
        if isinstance(held_out.get("eval_identity_psnr"), float):
            held += f" (identity {held_out['eval_identity_psnr']:.2f})"
        parts.append(held)
    return " | ".join(parts)


def is_held_out(key: str) -> bool:
    """Whether a metric is a held-out score (logged every eval_every only, shown until the next one)."""
    return key.startswith(("eval_", "style_"))


class StatusLine:
    """Formats a record as one line; remembers the latest held-out scores (they come every eval_every only)."""

    def __init__(self, steps: int, first_iteration: int = 0):
        self.steps, self.first = steps, first_iteration
        self.held_out: dict[str, float] = {}

    def __call__(self, record: dict[str, Any]) -> str:
        it = int(record["iteration"])
        self.held_out |= {k: v for k, v in record.items() if is_held_out(k)}
        parts = [f"iteration {it}/{self.steps} ({100.0 * it / max(1, self.steps):.1f}%)"]
        text = metrics_text(record, self.held_out)
        if text:
            parts.append(text)
        done = it - self.first
        seconds = float(record.get("seconds", 0.0))
        if done > 0 and seconds > 0:
            per_step = seconds / done
            parts.append(f"{per_step:.2f} s/it, {format_duration(per_step * max(0, self.steps - it))} left")
        return " | ".join(parts)


def append_history(folder: str, records: Iterable[dict[str, Any]], **storage_options) -> None:
    """Append records (JSON lines) to folder/history.jsonl (created when missing)."""
    lines = "".join(json.dumps(_finite(r), sort_keys=True) + "\n" for r in records)
    if not lines:
        return
    url = join_url(folder, HISTORY_NAME)
    fs, path = filesystem(url, **storage_options)
    old = fs.cat_file(path) if fs.exists(path) else b""  # object stores cannot append: rewrite (small file)
    write_bytes_atomic(url, old + lines.encode(), **storage_options)  # creates the folder when missing


def read_history(folder: str, **storage_options) -> list[dict[str, Any]]:
    """The records of folder/history.jsonl by iteration (a later record of one iteration replaces an earlier
    one: the iterations repeated after resuming from an older checkpoint); [] when there is none. Torn last
    lines (a killed writer) are skipped."""
    fs, path = filesystem(join_url(folder, HISTORY_NAME), **storage_options)
    if not fs.exists(path):
        return []
    by_iteration: dict[int, dict[str, Any]] = {}
    for line in fs.cat_file(path).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            by_iteration[int(record["iteration"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return [by_iteration[k] for k in sorted(by_iteration)]


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in history:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(int(record["iteration"]))
            ys.append(float(value))
    return xs, ys


def plot_history(history: Sequence[dict[str, Any]], title: str = "training") -> bytes:
    """PNG bytes: up to three panels over iterations (losses; lambda(s), log scale; held-out PSNR in dB)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    keys = sorted({k for r in history for k in r})
    panels = [
        ("loss", [k for k in keys if k.startswith("loss_") or k in ("adversarial", "wasserstein_y", "wasserstein_x")],
         False),
        ("lambda (gradient-penalty weight)", [k for k in keys if k.startswith("lambda_")], True),
        ("held-out PSNR (dB)", [k for k in keys if k.startswith("eval_") and k.endswith("psnr")], False),
    ]
    panels = [p for p in panels if any(_series(history, k)[0] for k in p[1])]
    figure = Figure(figsize=(8, 2.6 * max(1, len(panels))), dpi=100)
    axes = figure.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, names, log_scale) in zip(axes, panels, strict=False):
        for name in names:
            xs, ys = _series(history, name)
            if xs:
                ax.plot(xs, ys, label=name, linewidth=1.2, marker="o" if len(xs) < 30 else None, markersize=3)
        if log_scale and all(y > 0 for n in names for y in _series(history, n)[1]):
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if not panels:
        axes[0].text(0.5, 0.5, "no records yet", ha="center", va="center")
    axes[-1].set_xlabel("iteration")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_plot(folder: str, title: str = "training", **storage_options) -> str:
    """Draw folder/history.jsonl into folder/progress.png (atomic); returns the plot's URL."""
    url = join_url(folder, PLOT_NAME)
    write_bytes_atomic(url, plot_history(read_history(folder, **storage_options), title), **storage_options)
    return url
