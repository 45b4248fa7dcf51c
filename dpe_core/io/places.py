"""Where things are: a folder URL parsed once into (filesystem, root), its canonical identity, and the checks that
keep a destination apart from its source.

A user's URL is parsed exactly once (``Place.parse``); files under it are addressed as (filesystem, root + '/' +
relative name) and never turned back into a URL string that fsspec would parse again (a name such as
``p.jpg::q.jpg``, ``a#b.jpg`` or ``x?y.jpg`` stays a name).

Identity, used to tell whether two URLs are the same place, one inside the other, or unrelated:

* local paths (plain, ``file://``, ``local://``, behind ``simplecache::`` and the other caching wrappers):
  ``os.path.realpath`` (symlinks, ``..``, ``//``), then, for folders that exist, their (device, inode) and those of
  their ancestors (bind mounts, case-insensitive volumes, another spelling of the same folder);
* object stores and other filesystems: the filesystem's protocol family (``s3`` and ``s3a`` are one), the path with
  ``//``, ``.`` and ``..`` collapsed (conservative: two spellings that *might* be one place count as one).

No Prefect, no torch: the flow process, the CLI, the workers and dpe_core's own writers (training exports,
checkpoints, packs, quality sheets) import this module.
"""

from __future__ import annotations

import os
import posixpath
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

Relation = Literal["same", "inside", "contains"]

_SCHEME = re.compile(r"(^|::)([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")


def normalize_url(url: str) -> str:
    """The URL with every scheme of a chain lower-cased ('S3://b/k' -> 's3://b/k'); otherwise unchanged."""
    return _SCHEME.sub(lambda m: m.group(1) + m.group(2).lower() + m.group(3), url)


def join(base: str, *parts: str) -> str:
    """Join fixed names (our own bookkeeping names, never a listed file's name) onto a folder URL with '/'."""
    out = base.rstrip("/")
    for part in parts:
        if part:
            out = f"{out}/{part.strip('/')}"
    return out


def _unwrap(fs: Any) -> Any:
    """The filesystem under caching wrappers (simplecache::, filecache::, blockcache::), which keep no data of
    their own: identity and every read and write use the filesystem underneath."""
    from fsspec.implementations.cached import CachingFileSystem

    while isinstance(fs, CachingFileSystem) and getattr(fs, "fs", None) is not None:
        fs = fs.fs
    return fs


def _local_key(path: str, resolve: bool) -> str:
    path = os.path.expanduser(path)
    if path.startswith("//"):  # POSIX leaves a leading '//' to the implementation; on Linux it is '/'
        path = "/" + path.lstrip("/")
    return os.path.realpath(path) if resolve else os.path.normpath(os.path.abspath(path))


def _family(fs: Any) -> str:
    if isinstance(fs, LocalFileSystem):
        return "local"
    protocol = fs.protocol
    return (protocol if isinstance(protocol, str) else protocol[0]).lower()


@dataclass(frozen=True)
class Place:
    """A folder on some filesystem, parsed once.

    url: as given (scheme lower-cased); fs: the filesystem (caching wrappers removed); root: the folder's path in
    fs without a trailing '/' (local: its real path); family: 'local', 's3', 'memory', ...; key: canonical path
    for comparisons (local: real path; others: '/'-rooted, '//', '.' and '..' collapsed).
    """

    url: str
    fs: Any
    root: str
    family: str
    key: str
    resolved: bool = True  # False: a lexical identity (no symlinks resolved, no inodes compared)

    @classmethod
    def parse(cls, url: str, resolve: bool = True) -> Place:
        """resolve: follow symlinks (local) — False gives a lexical identity without touching any filesystem."""
        url = normalize_url(url)
        fs, path = url_to_fs(url)
        fs = _unwrap(fs)
        family = _family(fs)
        if family == "local":
            key = _local_key(path, resolve)
            return cls(url, fs, key, family, key, resolve)
        root = path.rstrip("/") or ("/" if path.startswith("/") else "")
        key = posixpath.normpath("/" + root)
        return cls(url, fs, root, family, key.replace("//", "/"), resolve)

    @property
    def is_local(self) -> bool:
        return self.family == "local"

    @property
    def canonical(self) -> str:
        """The identity as people read it: a real path, or protocol://bucket/key."""
        return self.key if self.is_local else f"{self.family}://{self.key.lstrip('/')}"

    def path(self, rel: str) -> str:
        """Path of a file under this folder, in this filesystem (rel as listed: never parsed, only joined)."""
        return f"{self.root.rstrip('/')}/{rel}"

    def display(self, rel: str) -> str:
        """A readable location of a file under this folder (local: the path; others: protocol://path)."""
        path = self.path(rel)
        return path if self.is_local else f"{self.family}://{path.lstrip('/')}"

    def stat_id(self) -> tuple[int, int] | None:
        """(device, inode) of a local folder that exists, else None."""
        if not self.is_local:
            return None
        return _stat_id(self.root)


def _stat_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestor_ids(path: str) -> list[tuple[int, int]]:
    """(device, inode) of every existing proper ancestor of a path, nearest first."""
    out = []
    current = path
    while True:
        parent = os.path.dirname(current)
        if parent == current:
            return out
        current = parent
        found = _stat_id(current)
        if found:
            out.append(found)


def _under(key: str, folder: str) -> bool:
    return key.startswith(folder.rstrip("/") + "/")


def relation(a: Place, b: Place) -> Relation | None:
    """Where b is with respect to a: 'same' place, 'inside' a, 'contains' a, or None (apart)."""
    if a.family != b.family:
        return None
    if a.key == b.key:
        return "same"
    if _under(b.key, a.key):
        return "inside"
    if _under(a.key, b.key):
        return "contains"
    if a.is_local and a.resolved and b.resolved:  # one folder, two names: bind mounts, case-insensitive volumes
        ida, idb = a.stat_id(), b.stat_id()
        if ida and ida == idb:
            return "same"
        if ida and ida in _ancestor_ids(b.key):
            return "inside"
        if idb and idb in _ancestor_ids(a.key):
            return "contains"
    return None


class DestinationError(ValueError):
    """A destination that is its source, lies inside it or contains it: bad usage (the CLI exits with 2)."""


def destination_problem(source: Place, dest: Place, what: str = "destination") -> str | None:
    """Why dest may not be written while source is read, or None."""
    where = relation(source, dest)
    if where is None:
        return None
    src, dst, skey, dkey = source.url, dest.url, source.canonical, dest.canonical
    if where == "same":
        same = f"both are {dkey}" if dkey == skey else f"{dkey} and {skey} are one folder"
        return (f"the {what} {dst} is the source {src} ({same}): dest_url must differ from source_url, "
                f"originals are never written")
    if where == "inside":
        return (f"the {what} {dst} lies inside the source {src} ({dkey} is under {skey}): dest_url must not lie "
                f"inside source_url; choose a folder outside the originals")
    return (f"the source {src} lies inside the {what} {dst} ({skey} is under {dkey}): source_url must not lie inside "
            f"dest_url (outputs could land on originals)")


def check_apart(url: str, photo_folders: Sequence[str], what: str) -> None:
    """Raise DestinationError when url, a folder about to be written (by a tool that is not a photo pipeline:
    checkpoints, models, packs, contact sheets, benchmark work), is one of photo_folders under any name, lies inside
    one or holds one. The message names both folders and their real identities."""
    target = Place.parse(url)
    for folder in photo_folders:
        photos = Place.parse(folder)
        where = relation(photos, target)
        if where is not None:
            how = {"same": "is that folder", "inside": "lies inside it", "contains": "holds it"}[where]
            raise DestinationError(f"the {what} {url} ({target.canonical}) overlaps the photo folder {folder} "
                                   f"({photos.canonical}): it {how}; choose a folder apart from the photos, "
                                   f"originals are never written")


def check_destinations(source_url: str, destinations: list[tuple[str, str]], resolve: bool = True) -> None:
    """Raise DestinationError when any (what, url) destination is the source, inside it, or contains it.

    resolve=False: a lexical check that touches no filesystem (parameter validation); True: real paths, inodes.
    """
    source = Place.parse(source_url, resolve=resolve)
    for what, url in destinations:
        problem = destination_problem(source, Place.parse(url, resolve=resolve), what)
        if problem:
            raise DestinationError(problem)
    if resolve:
        _check_bookkeeping_links(destinations)


def _check_bookkeeping_links(destinations: list[tuple[str, str]]) -> None:
    """A destination's bookkeeping folder that is a symbolic link would take the reports elsewhere: refuse it
    up front (the guarded writer would refuse each write anyway)."""
    for what, url in destinations:
        place = Place.parse(url)
        if place.is_local and os.path.islink(os.path.join(place.root, ".dpe")):
            raise DestinationError(f"{place.root}/.dpe in the {what} is a symbolic link: dpe never follows links "
                                   f"inside a destination; remove it or choose another destination")


# ------------------------------------------------------------------------------------------------ names


def rel_problem(rel: str) -> str | None:
    """Why a relative name cannot safely name a file under a destination (None: it can).

    Refused: empty names, absolute names, empty ('//'), '.' or '..' parts, NUL characters. Object stores and the
    memory filesystem allow such keys; joined under a destination they would land elsewhere or collapse onto
    another name.
    """
    if not rel:
        return "the name is empty"
    if "\x00" in rel:
        return "the name holds a NUL character"
    if rel.startswith("/"):
        return "the name is absolute (starts with '/')"
    parts = rel.split("/")
    if any(p == "" for p in parts):
        return "the name has an empty part ('//' or a trailing '/')"
    if any(p in (".", "..") for p in parts):
        return "the name has a '.' or '..' part"
    return None


def printable(text: object) -> str:
    """Text safe for logs, the Prefect API and artifacts (UTF-8 only): a file name's undecodable bytes (surrogate
    escapes) are shown as '\\xNN'. Reports keep the exact name (JSON '\\udcNN', os.fsencode gives the bytes)."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def name_key(rel: str) -> str:
    """A name as a case-insensitive, normalisation-insensitive filesystem sees it (macOS, Windows, many SMB
    shares): canonical caseless form, NFD(casefold(NFD(name)))."""
    nfd = unicodedata.normalize("NFD", rel)
    return unicodedata.normalize("NFD", nfd.casefold())


def artifact_key(prefix: str, url: str) -> str:
    """A Prefect artifact key (lower case, dashes) naming a destination or model, so runs on it form a history."""
    slug = re.sub(r"[^a-z0-9]+", "-", url.lower()).strip("-")
    return f"{prefix}-{slug}"[:100].strip("-")
