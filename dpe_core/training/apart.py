"""Keep what training writes (checkpoints, exported models, packs) apart from the photos it reads: a folder that
is a photo folder, lies inside one or holds one is refused before anything is written (originals are never
written, not even beside themselves)."""

from __future__ import annotations

import posixpath

from dpe_core.io.places import DestinationError, check_apart
from dpe_core.training.config import DataConfig

__all__ = ["photo_folders", "check_apart_from_photos", "DestinationError"]


def photo_folders(data: DataConfig) -> list[str]:
    """The folders (fsspec URLs) whose photos a run reads: its domain folders and those of its extra photo files."""
    folders = [data.source_url, data.reference_url, data.input_url, data.target_url, data.degrade_url]
    folders += [posixpath.dirname(url) for url in (*data.extra_train_urls, *data.extra_val_urls)]
    return list(dict.fromkeys(f for f in folders if f))


def check_apart_from_photos(data: DataConfig, url: str, what: str) -> None:
    """Raise DestinationError (a ValueError naming both folders) when url, a folder about to be written, is one of
    data's photo folders (under any name: symlinks, '//', bind mounts), lies inside one or contains one."""
    check_apart(url, photo_folders(data), what)
