"""Writes that survive a power loss, not only a killed process.

A rename is atomic, but without fsync the kernel may write the directory entry before the file
data: after a power cut the new name can point at empty or partial files. So a checkpoint is
fsynced file by file, then its directory, then renamed, then the parent directory is fsynced (the
rename itself is then on disk). Only after that may older checkpoints be deleted.
POSIX semantics; on filesystems that ignore fsync (some network mounts) this is best effort.
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make `path`'s entries (names created, renamed or deleted in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file under `root`, then every directory bottom-up, `root` included."""
    for here, dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(here) / name
            if not p.is_symlink():
                fsync_file(p)
        fsync_dir(Path(here))


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`: readers see the old content or the new, even after a power cut."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
