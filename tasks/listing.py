"""Listing a source: which files are inputs, which were left out and why, and reading an input from where it is.

Policy (docs/flows.md, "Sources, destinations and names"):

* hidden files and folders (a name starting with '.': macOS '._*' forks, '.dpe' bookkeeping, temp files) and
  files of other formats are not inputs (left out silently: they are not photos we were asked for);
* local sources: a symbolic link to a file inside the source tree is followed (read as that name); a link to a
  file outside the tree and a link to a folder are not followed; a broken link, a link loop, a folder that cannot
  be read or a folder seen twice (a loop through bind mounts) is an error. Each of these appears in the run's
  report (status 'skipped' for the link policy, 'error' for the rest, with the reason);
* object stores and memory: a key with an empty, '.' or '..' part, or an absolute one, cannot be given a name
  inside a destination: it is an error record, whatever include_hidden says.

Names are kept exactly as listed (never re-parsed as URLs); on local disks a name that is not valid UTF-8 is a
str with surrogate escapes (os.fsencode gives the bytes back), which JSON writes as '\\udcXX'.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dpe_core.io.places import Place, rel_problem
from tasks.writer import TMP_PREFIX

# Input formats -> file extensions (lower case). "mpo" is a JPEG with extra frames (stereo cameras).
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "jpeg": (".jpg", ".jpeg", ".jpe"),
    "png": (".png",),
    "tiff": (".tif", ".tiff"),
    "webp": (".webp",),
    "heic": (".heic", ".heif"),
    "mpo": (".mpo",),
}
DEFAULT_FORMATS = ("jpeg", "png", "tiff", "webp", "heic", "mpo")


@dataclass(frozen=True)
class FileEntry:
    """One listed file: relative posix path under the listed root, where it is (for reports), size in bytes,
    version stamp.

    version: the object store's ETag where there is one, else the modification time; with the size it tells
    whether an input changed since an output was made from it. url is for people: readers use
    (Place.parse(source root), rel), never the url.
    """

    rel: str
    url: str
    size: int
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Listing:
    """The inputs of a source, and what was left out with the reason (report records: input, status, reason)."""

    entries: list[FileEntry] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return str(info[key]).strip('"')
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is not None:
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def matches(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """fnmatch-style patterns on the relative path ('*' also crosses '/'); a pattern without '/' also tests
    the file name, so '*.jpg' and 'IMG_*' do what one expects at any depth."""

    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(rel, pattern) or ("/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1],
                                                                                                 pattern))

    return any(hit(p) for p in include) and not any(hit(p) for p in exclude)


def extensions_for(formats: Iterable[str]) -> tuple[str, ...]:
    exts: list[str] = []
    for fmt in formats:
        if fmt not in FORMAT_EXTENSIONS:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMAT_EXTENSIONS)}")
        exts.extend(FORMAT_EXTENSIONS[fmt])
    return tuple(exts)


def _left_out(rel: str, status: str, reason: str, size: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"input": rel, "output": None, "status": status, "reason": f"{rel}: {reason}"}
    if size is not None:
        record["input_size"] = size
    return record


def _walk_local(root: str, include_hidden: bool) -> Iterable[tuple[str, os.stat_result | None, str | None,
                                                                    str | None]]:
    """(rel, stat of the file, status, reason) of every file below a local folder; status/reason set for what is
    left out. Folders are never entered through links; a folder seen twice is a loop; hidden entries are passed
    over unless include_hidden."""
    seen: set[tuple[int, int]] = set()
    top = os.stat(root)
    seen.add((top.st_dev, top.st_ino))
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                children = list(scan)
        except OSError as exc:
            if not prefix:
                raise
            yield prefix.rstrip("/") + "/", None, "error", f"folder cannot be read ({exc.strerror or exc})"
            continue
        for child in children:
            if not include_hidden and child.name.startswith("."):
                continue
            rel = prefix + child.name
            try:
                if child.is_symlink():
                    st, status, reason = _follow_link(child.path, root)
                    folder_link = status == "skipped" and reason is not None and reason.startswith(_FOLDER_LINK)
                    yield (rel + "/" if folder_link else rel), st, status, reason
                elif child.is_dir(follow_symlinks=False):
                    st = child.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) in seen:
                        yield rel + "/", None, "error", "folder loop: this folder was already listed under another name"
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    stack.append((rel + "/", child.path))
                elif child.is_file(follow_symlinks=False):
                    yield rel, child.stat(follow_symlinks=False), None, None
                else:
                    yield rel, None, "skipped", "not a regular file (device, socket or pipe): not read"
            except OSError as exc:
                yield rel, None, "error", f"cannot be read ({exc.strerror or exc})"


_FOLDER_LINK = "symbolic link to a folder"


def _follow_link(path: str, root: str) -> tuple[os.stat_result | None, str | None, str | None]:
    target = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            return None, "error", "symbolic link loop"
        return None, "error", f"broken symbolic link to {target} ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return None, "skipped", f"{_FOLDER_LINK} ({target}): not followed (link policy)"
    if not stat.S_ISREG(st.st_mode):
        return None, "skipped", f"symbolic link to something that is not a regular file ({target}): not read"
    if not target.startswith(root.rstrip("/") + "/"):
        return None, "skipped", f"symbolic link to a file outside the source ({target}): not followed (link policy)"
    return st, None, None


def scan(url: str, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
         formats: Iterable[str] | None = DEFAULT_FORMATS, include_hidden: bool = False) -> Listing:
    """The inputs under a folder URL, sorted by relative path, filtered by patterns and formats (None: any file),
    and the files left out with their reason (see the module docstring). Raises FileNotFoundError when the
    folder does not exist, NotADirectoryError when it is a file."""
    place = Place.parse(url)
    fs, root = place.fs, place.root
    exts = extensions_for(formats) if formats is not None else None

    def wanted(rel: str, folder: bool = False) -> bool:
        if not include_hidden and _is_hidden(rel.rstrip("/")):
            return False
        if folder:
            return True
        return (exts is None or rel.lower().endswith(exts)) and matches(rel, include, exclude)

    listing = Listing()
    if place.is_local:
        if not os.path.exists(root):
            raise FileNotFoundError(f"{url}: no such folder")
        if not os.path.isdir(root):
            raise NotADirectoryError(f"{url} is a file; give the folder that holds the photos")
        for rel, st, status, reason in _walk_local(root, include_hidden):
            if not wanted(rel, folder=rel.endswith("/")):
                continue
            if status is not None:
                listing.left_out.append(_left_out(rel, status, reason or ""))
            else:
                listing.entries.append(FileEntry(rel, place.display(rel), int(st.st_size), str(st.st_mtime)))
    else:
        fs.invalidate_cache(root)
        if not fs.exists(root):
            raise FileNotFoundError(f"{url}: no such folder or bucket prefix")
        if fs.isfile(root):
            raise NotADirectoryError(f"{url} is a file; give the folder that holds the photos")
        prefix = root.rstrip("/") + "/"
        for path, info in fs.find(root, detail=True, withdirs=False).items():
            if info.get("type", "file") != "file" or not path.startswith(prefix):
                continue
            rel = path[len(prefix):]  # exactly one '/' removed: 'a//b' keeps its empty part
            problem = rel_problem(rel)
            if problem:  # before the hidden filter: '..' parts are refused whatever include_hidden says
                listing.left_out.append(_left_out(rel, "error", f"key {path!r} cannot name a file inside a "
                                                                f"destination: {problem}", int(info.get("size") or 0)))
                continue
            if wanted(rel):
                listing.entries.append(FileEntry(rel, place.display(rel), int(info.get("size") or 0), _version(info)))
    listing.entries.sort(key=lambda e: e.rel)
    listing.left_out.sort(key=lambda r: r["input"])
    return listing


def list_files(url: str, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
               formats: Iterable[str] | None = DEFAULT_FORMATS, include_hidden: bool = False) -> list[FileEntry]:
    """The inputs of scan() (what was left out is dropped)."""
    return scan(url, include, exclude, formats, include_hidden).entries


def list_sizes(url: str) -> dict[str, int]:
    """{relative path: size} of every regular file under a folder URL (hidden ones included); {} when it does
    not exist. Local folders: links are not followed (what a link points at is not an output of ours)."""
    place = Place.parse(url)
    if place.is_local:
        out: dict[str, int] = {}
        if not os.path.isdir(place.root):
            return out
        for folder, _dirs, files in os.walk(place.root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[os.path.relpath(path, place.root).replace(os.sep, "/")] = st.st_size
        return out
    fs, root = place.fs, place.root
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return {}
    prefix = root.rstrip("/") + "/"
    return {path[len(prefix):]: int(info.get("size") or 0)
            for path, info in fs.find(root, detail=True, withdirs=False).items()
            if info.get("type", "file") == "file" and path.startswith(prefix)}


def remove_stale_temp_files(url: str, older_than_s: float = 0.0) -> list[str]:
    """Delete leftover temp files of atomic local writes (a process killed between write and rename).

    Only files named with our temp prefix are touched; object stores never have them (one put per object).
    Returns the removed relative paths.
    """
    place = Place.parse(url)
    root = place.root
    if not place.is_local or not os.path.isdir(root):
        return []
    removed = []
    cutoff = time.time() - older_than_s
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                path = os.path.join(folder, name)
                try:
                    if os.lstat(path).st_mtime <= cutoff:
                        os.unlink(path)
                        removed.append(os.path.relpath(path, root).replace(os.sep, "/"))
                except FileNotFoundError:
                    pass
    return removed


def read_input(source: Place, rel: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a listed input, from (filesystem, root + '/' + rel): the name is joined, never parsed.
    Opens read-only; max_bytes: a larger input is refused before it is read (dpe_core.io.storage)."""
    from dpe_core.io.storage import read_path_bytes

    return read_path_bytes(source.fs, source.path(rel), max_bytes=max_bytes, name=rel)


def source_place(source_url: str | None, rel: str, url: str) -> Place:
    """The Place of an input's source folder: source_url when given, else the listed url without its rel."""
    if source_url:
        return _place(source_url)
    if not url.endswith(rel):
        raise ValueError(f"{url} does not end with {rel}")
    return _place(url[: len(url) - len(rel)].rstrip("/") or "/")


_PLACES: dict[str, Place] = {}


def _place(url: str) -> Place:
    """Places of source folders, parsed once per process."""
    found = _PLACES.get(url)
    if found is None:
        found = _PLACES[url] = Place.parse(url)
    return found
