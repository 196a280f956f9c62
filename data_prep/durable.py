"""Renames that survive a power cut, not only a kill: what a folder or file holds reaches the disk before
its final name points at it, and the rename itself after (ext4 and XFS may otherwise reorder them and
leave the final name on empty files)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some network and FUSE filesystems cannot sync a folder (PostgreSQL ignores these too)
        if not (path.is_dir() and e.errno in (errno.EINVAL, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def sync_tree(path: Path) -> None:
    """Every file and folder under `path` (or the file `path`) on disk, files before their folders."""
    for inner in sorted(path.rglob("*"), reverse=True) if path.is_dir() else []:
        if inner.is_file() or inner.is_dir():
            fsync_path(inner)
    fsync_path(path)


def replace(tmp: Path, final: Path) -> None:
    """`os.replace(tmp, final)` once everything under `tmp` is on disk, and the rename itself after."""
    sync_tree(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)
