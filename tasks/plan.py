"""The plan of an enhance run: each input's output name, and whether it is done, (re)done or refused.

* Output names: the input's relative path, the extension changed only for another output format (MPO becomes
  '.jpg'); ``format_for_output`` makes every output's bytes match its name.
* Refused at planning time (error records, nothing written): an output name that is not a plain relative name,
  that lands in the bookkeeping folder ``.dpe`` or looks like a temp file, and every input of a group whose
  outputs would be one file on a case- or normalisation-insensitive filesystem (``A.JPG`` + ``a.jpg``, NFC + NFD
  twins, ``x.png`` + ``x.jpg`` with ``output_format=jpeg``) or where one output would be another's folder.
  Every destination is treated as possibly case-insensitive: each input of such a group is reported, naming
  the others, and none of them is written.
* Skipped: recorded ok with the same settings, input unchanged, output intact (``_why``).

Plain Python: no Prefect, no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dpe_core.io.places import name_key, rel_problem
from tasks.listing import FileEntry
from tasks.manifest import STATE_DIR
from tasks.writer import TMP_PREFIX

OUTPUT_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}
# Inputs whose format is read but not written under its own extension keep their name with a new extension.
SAME_FORMAT_RENAMES = {".mpo": ".jpg"}  # stereo MPO: the first frame is enhanced and written as a JPEG
WRITE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
                 ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF"}


def settings_key(settings: dict[str, Any]) -> str:
    """Short stable hash of everything that shapes an output's bytes (model weights, mode, format, quality...)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_rel(rel: str, output_format: str) -> str:
    """Output path relative to the destination: the input's, with the extension changed when the format is."""
    name = rel.rsplit("/", 1)[-1]
    stem, ext = (rel[: -len(name.rsplit(".", 1)[1]) - 1], "." + name.rsplit(".", 1)[1]) if "." in name else (rel, "")
    if output_format == "same":
        return stem + SAME_FORMAT_RENAMES[ext.lower()] if ext.lower() in SAME_FORMAT_RENAMES else rel
    return stem + OUTPUT_EXTENSIONS[output_format]


def format_for_output(out_rel: str) -> str | None:
    """The encode_photo format an output's extension names, so every output's bytes match its name
    (None: no known extension, the source's own format)."""
    name = out_rel.rsplit("/", 1)[-1]
    return WRITE_FORMATS.get("." + name.rsplit(".", 1)[-1].lower()) if "." in name else None


def output_name_problem(out: str) -> str | None:
    """Why an output name may not be written into a destination (None: it may)."""
    problem = rel_problem(out)
    if problem:
        return problem
    if name_key(out.split("/", 1)[0]) == name_key(STATE_DIR):
        return f"it would land in dpe's bookkeeping folder {STATE_DIR}/"
    if name_key(out.rsplit("/", 1)[-1]).startswith(TMP_PREFIX):
        return f"names starting with {TMP_PREFIX} are dpe's temp files (removed by the next run)"
    return None


def name_conflicts(outputs: dict[str, str], what: str = "output") -> dict[str, str]:
    """{input: reason} for inputs whose outputs ({input: output name}) would be one file, or one's file another's
    folder, on a case- and normalisation-insensitive filesystem. Every member of a group is named; what: the word
    for the written file in the reasons ('output', 'training copy')."""
    groups: dict[str, list[str]] = defaultdict(list)
    folders: dict[str, list[str]] = defaultdict(list)
    for rel, out in outputs.items():
        groups[name_key(out)].append(rel)
        parts = out.split("/")
        for depth in range(1, len(parts)):
            folders[name_key("/".join(parts[:depth]))].append(rel)
    reasons: dict[str, str] = {}
    for members in groups.values():
        if len(members) > 1:
            for rel in members:
                others = ", ".join(sorted(m for m in members if m != rel))
                reasons[rel] = (f"{rel}: {what} {outputs[rel]} is also the {what} of {others} (names that differ only "
                                f"in case, Unicode normalisation or an extension changed by the format are one file on "
                                f"some filesystems): none of them is written")
    for key, members in groups.items():
        users = sorted(set(folders.get(key, ())))
        if users:
            for rel in members:
                reasons.setdefault(rel, f"{rel}: {what} {outputs[rel]} is also a folder of the {what} of "
                                        f"{', '.join(users)}: none of them is written")
            for rel in users:
                reasons.setdefault(rel, f"{rel}: a folder of {what} {outputs[rel]} is also the {what} file of "
                                        f"{', '.join(sorted(members))}: none of them is written")
    return reasons


@dataclass
class WorkItem:
    """One input to enhance: its name under the source, where it is (for people), where its output goes, and why
    it is (re)done. Readers use (source Place, rel), never url."""

    rel: str
    url: str
    size: int
    version: str
    output: str
    why: str = "new"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    todo: list[WorkItem] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # refused before any work (names, collisions)
    left_out: list[dict[str, Any]] = field(default_factory=list)  # listing: links not followed, unreadable ...

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.skipped) + len(self.errors) + len(self.left_out)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Report records of every input decided without work (skipped, refused, left out)."""
        return list(self.skipped) + list(self.errors) + list(self.left_out)


def plan(entries: Sequence[FileEntry], state: dict[str, dict[str, Any]], dest_sizes: dict[str, int],
         settings: str, output_format: str = "same", overwrite: bool = False,
         left_out: Sequence[dict[str, Any]] = ()) -> Plan:
    """Decide per input: refuse (unsafe or colliding output name), skip (output exists, recorded ok with the same
    input, settings and size) or do.

    Redo when the output is missing, has another size than recorded (truncated, replaced), the input changed
    (size or version), the settings differ, or the last attempt failed. overwrite: redo everything.
    left_out: the listing's records of inputs not read (reported as they are).
    """
    result = Plan(left_out=list(left_out))
    outputs = {entry.rel: output_rel(entry.rel, output_format) for entry in entries}
    refused = {rel: f"{rel}: output name {out!r} refused: {problem}" for rel, out in outputs.items()
               if (problem := output_name_problem(out))}
    refused |= name_conflicts({rel: out for rel, out in outputs.items() if rel not in refused})
    for entry in entries:
        out = outputs[entry.rel]
        if entry.rel in refused:
            result.errors.append({"input": entry.rel, "output": out, "status": "error",
                                  "reason": refused[entry.rel], "input_size": entry.size})
            continue
        record = state.get(entry.rel)
        why = _why(entry, out, record, dest_sizes, settings, overwrite)
        if why is None:
            result.skipped.append({"input": entry.rel, "output": out, "status": "skipped",
                                   "reason": "already done", "input_size": entry.size,
                                   "output_size": record.get("output_size"),
                                   "output_sha256": record.get("output_sha256"),
                                   "settings": settings})
        else:
            result.todo.append(WorkItem(entry.rel, entry.url, entry.size, entry.version, out, why))
    return result


def _why(entry: FileEntry, out: str, record: dict[str, Any] | None, dest_sizes: dict[str, int], settings: str,
         overwrite: bool) -> str | None:
    if overwrite:
        return "overwrite"
    if record is None:
        return "new" if out not in dest_sizes else "output not recorded"
    if record.get("status") != "ok":
        return "previous attempt failed"
    if record.get("settings") != settings:
        return "settings changed"
    if record.get("input_size") != entry.size or (record.get("input_version") or "") != entry.version:
        return "input changed"
    if record.get("output") != out or out not in dest_sizes:
        return "output missing"
    if record.get("output_size") != dest_sizes[out]:
        return "output differs from the record"
    return None
