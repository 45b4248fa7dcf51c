"""JSON and JSON-lines blobs: encoding records, reading them back (a torn last line is tolerated), timestamps.

Reading only: writes into a destination go through tasks.writer (guarded), the model registry writes its index
itself. No Prefect, no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from fsspec.core import url_to_fs


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def dumps_json(value: Any) -> bytes:
    """A JSON document (indented, sorted keys) as bytes; non-JSON values as str."""
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    """One JSON object per line. ASCII-escaped: a name that is not valid UTF-8 (surrogate escapes) or holds a
    newline stays one line and reads back as the same str."""
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode()


def loads_jsonl(data: bytes, where: str = "") -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines blob; a torn last line (writer killed) is skipped, other bad lines raise."""
    lines = data.decode("utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                continue
            raise ValueError(f"{where}: line {number} is not JSON: {exc}") from exc


def read_jsonl(url: str) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; [] when it does not exist."""
    fs, path = url_to_fs(url)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return []
    return list(loads_jsonl(data, url))


def read_json(url: str) -> Any | None:
    """A JSON document; None when it does not exist."""
    fs, path = url_to_fs(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
