"""Renames that survive a power cut, not only a kill: what a folder or file holds reaches the disk before
its final name points at it, and the rename itself after (ext4 and XFS may otherwise reorder them and
leave the final name on empty files)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: Path, final: Path) -> None:
    """`os.replace(tmp, final)` once every file and folder under `tmp` (or the file `tmp`) is on disk."""
    for path in sorted(tmp.rglob("*"), reverse=True) if tmp.is_dir() else []:  # files before their folders
        if path.is_file() or path.is_dir():
            fsync_path(path)
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)
