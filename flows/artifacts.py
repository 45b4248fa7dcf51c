"""Prefect artifacts of a run: progress, counts/throughput table, markdown summary with failures and previews.

Previews are small inline base64 JPEGs inside markdown: Prefect's image artifact only links to a URL the
browser can reach, which an s3:// or local path is not.
"""

from __future__ import annotations

from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from dpe_core.io.places import printable

MAX_FAILURES_LISTED = 50


class Progress:
    """A progress artifact updated as photos finish (flows/progress.py; best effort: a failed API call never fails
    the run). Its description is the title, then the latest counts, rate and time left when given."""

    def __init__(self, description: str):
        self.id = None
        self.title = description
        self.last: tuple[float, str | None] = (-1.0, None)
        try:
            self.id = create_progress_artifact(progress=0.0, description=description)
        except Exception:  # pragma: no cover - API hiccup
            self.id = None

    def update(self, fraction: float, status: str | None = None) -> None:
        """Set the percentage (and the status line under the title)."""
        percent = round(100.0 * max(0.0, min(1.0, fraction)), 1)
        if self.id is None or (percent, status) == self.last:
            return
        try:
            update_progress_artifact(self.id, progress=percent,
                                     description=f"{self.title}: {status}" if status else None)
            self.last = (percent, status)
        except Exception:  # pragma: no cover
            pass


def _escape(text: Any) -> str:
    return printable(text).replace("|", "\\|").replace("\n", " ")


def counts_table(summary: dict[str, Any], key: str | None, description: str) -> None:
    counts = summary["counts"]
    rows = [
        {"metric": "photos listed", "value": summary["total"]},
        {"metric": "enhanced (ok)", "value": counts.get("ok", 0)},
        {"metric": "skipped (already done)", "value": counts.get("skipped", 0)},
        {"metric": "failed", "value": counts.get("error", 0)},
        {"metric": "shards", "value": summary.get("shards", 0)},
        {"metric": "workers", "value": summary.get("workers", 0)},
        {"metric": "photos/s (enhance phase)", "value": summary.get("photos_per_s")},
        {"metric": "enhance phase (s)", "value": summary.get("phase_s")},
        {"metric": "cluster start (s)", "value": summary.get("cluster_start_s")},
        {"metric": "model load on the workers (s)", "value": summary.get("model_load_s")},
        {"metric": "orchestration overhead per shard (s)", "value": summary.get("overhead_per_shard_s")},
        {"metric": "idle worker time per shard incl. tail (s)", "value": summary.get("idle_per_shard_s")},
        {"metric": "run total (s)", "value": summary.get("total_s")},
    ]
    for row in rows:  # a figure that does not exist (no enhancement phase, one shard) reads n/a, never None
        if row["value"] is None:
            row["value"] = "n/a"
    create_table_artifact(table=rows, key=key, description=description)


def summary_markdown(title: str, summary: dict[str, Any], failures: list[dict[str, Any]],
                     previews: list[dict[str, str]] | None = None) -> str:
    counts = summary["counts"]
    lines = [f"# {title}", ""]
    for label, key in (("Source", "source_url"), ("Destination", "dest_url"), ("Model", "model"),
                       ("Mode", "mode"), ("Report", "report_url"), ("Manifest", "manifest_url")):
        if summary.get(key):
            lines.append(f"- **{label}:** `{summary[key]}`")
    lines += ["", f"**{counts.get('ok', 0)}** ok, **{counts.get('skipped', 0)}** skipped, "
                  f"**{counts.get('error', 0)}** failed of **{summary['total']}** photos"
                  + (f" — {summary['photos_per_s']} photos/s" if summary.get("photos_per_s") else "")
                  + (f", first output after {summary['first_output_s']} s" if summary.get("first_output_s") else ""),
              ""]
    if failures:
        lines += ["## Failures", "", "| photo | reason |", "|---|---|"]
        for record in failures[:MAX_FAILURES_LISTED]:
            lines.append(f"| `{_escape(record['input'])}` | {_escape(record.get('reason', ''))} |")
        if len(failures) > MAX_FAILURES_LISTED:
            lines.append(f"| … | {len(failures) - MAX_FAILURES_LISTED} more in the report |")
        lines.append("")
    if previews:
        lines += ["## Before / after", "", "| photo | before | after |", "|---|---|---|"]
        for p in previews:
            lines.append(f"| `{_escape(p['input'])}` | ![before](data:image/jpeg;base64,{p['before']}) "
                         f"| ![after](data:image/jpeg;base64,{p['after']}) |")
        lines.append("")
    return "\n".join(lines)


def publish_summary(markdown: str, key: str | None, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=key, description=description)
