"""The one commit of every checkpoint and final model of every loop: temporary directory, fsync, rename.

    tmp = begin(root, name)        # rank 0: checkpoints/.tmp-step_N-<rand>/ (stale debris removed first)
    ... every rank writes into tmp ...
    finish(tmp, root / name)       # rank 0: manifest, fsync every file and directory, rename, fsync root

`finish` writes `checkpoint.json` (a commit number one above every checkpoint beside it, and every
file's size), fsyncs the whole tree, renames it into place and fsyncs the parent: the rename is the
commit, durable after a killed process or a power cut alike (rltool/durable.py). A checkpoint
already holding that name (another branch of the run: a resume from an older step) is moved to
`checkpoints/superseded-<time>/`, never deleted. Only then is `latest` replaced and older
checkpoints pruned. Anything named `step_*` that rltool did not write (a file, a symlink) is left
alone and named once, never a reason for a save to fail.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from rltool import faults
from rltool.ckpt_layout import (LATEST, MANIFEST, SUPERSEDED, TMP_PREFIX, commit_number, newest_first,
                                step_entries)
from rltool.durable import fsync_dir, fsync_tree, write_atomic

OLD_MARK = "-old-"
"""`.tmp-<name>-old-<rand>/<name>`: a committed directory moved aside by `_swap` (final/ only)."""


def begin(root: Path, name: str) -> Path:
    """A fresh temporary directory in `root` for `name` (rank 0 only; under ZeRO-3 the caller
    broadcasts it, every rank writes its shard there). Debris of interrupted saves goes first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root, f"{TMP_PREFIX}{'final' if name == 'final' else ''}*")
    # No cleanup on failure: an exception and a SIGKILL leave the same `.tmp-*` debris, and the
    # next save removes both the same way.
    return Path(tempfile.mkdtemp(dir=root, prefix=f"{TMP_PREFIX}{name}-"))


def finish(tmp: Path, final: Path, *, keep_last: int | None = None) -> Path:
    """Commit `tmp` as `final` (rank 0 only). A checkpoint (`keep_last` given) also gets its manifest,
    moves `latest` to it and prunes; `final/` replaces the previous final/ (that one is only a copy of
    a checkpoint's model/)."""
    tmp, final = Path(tmp), Path(final)
    root = final.parent
    if keep_last is not None:
        write_manifest(tmp, 1 + max(map(commit_number, step_entries(root)[0]), default=0))
    fsync_tree(tmp)  # the files' data is on disk before the name that says "complete" is
    if keep_last is None and final.exists():
        _swap(tmp, final)
    else:
        if final.exists() or final.is_symlink():  # another branch's step_N (or junk by that name): kept
            aside = supersede([final])
            print(f"checkpoint: {final.name} of an earlier branch of this run is kept in {aside}")
        os.rename(tmp, final)  # atomic on POSIX: the directory appears complete or not at all
    fsync_dir(root)  # the commit: the rename itself is durable
    if keep_last is None:
        return final
    faults.point("ckpt:rename")
    write_atomic(root / LATEST, final.name + "\n")  # readers see the old content or the new
    faults.point("ckpt:latest")
    prune(root, keep=keep_last, current=final.name)  # only now: the new checkpoint is durable
    return final


def write_manifest(tmp: Path, commit: int) -> None:
    """checkpoint.json: the commit number and every file's size, so that resume can tell a complete
    checkpoint from one damaged since (a truncated file, a missing actor)."""
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*"))
             if p.is_file() and not p.is_symlink()}
    (tmp / MANIFEST).write_text(json.dumps({"commit": commit, "files": files}, indent=0) + "\n")


def supersede(dirs: list[Path]) -> Path:
    """Move `dirs` (entries of one checkpoints/ directory) into a new `superseded-<time>[-k]/` beside
    them; returns it. Outside `step_*`: neither resume nor pruning ever touch what is in it."""
    root = Path(dirs[0]).parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):  # two resumes in one second get two directories
        aside = root / (f"{SUPERSEDED}{stamp}" + (f"-{k}" if k > 1 else ""))
        try:
            aside.mkdir()
            break
        except FileExistsError:
            continue
    for d in dirs:
        os.rename(d, aside / d.name)
    fsync_dir(aside)
    fsync_dir(root)
    return aside


def _swap(new: Path, old: Path) -> None:
    """Swap `new` into `old`'s place. POSIX cannot rename over a non-empty directory, so the old
    one is moved aside first. A crash between the two renames leaves no `old`, but its copy aside
    is put back by the next `remove_stale_tmp` (never deleted while it is the only copy)."""
    aside = Path(tempfile.mkdtemp(dir=old.parent, prefix=f"{TMP_PREFIX}{old.name}{OLD_MARK}"))
    os.rename(old, aside / old.name)
    os.rename(new, old)
    fsync_dir(old.parent)
    shutil.rmtree(aside)


def remove_stale_tmp(root: Path, pattern: str = f"{TMP_PREFIX}*") -> None:
    """Debris of interrupted saves: half-written `.tmp-*` directories go; a committed directory
    that `_swap` had moved aside goes back to its name when nothing took its place."""
    for stale in root.glob(pattern):
        real_dir = stale.is_dir() and not stale.is_symlink()
        if real_dir and OLD_MARK in stale.name:
            for moved in stale.iterdir():
                if not (root / moved.name).exists():
                    os.rename(moved, root / moved.name)
                    fsync_dir(root)
        if real_dir:
            shutil.rmtree(stale)
        else:
            stale.unlink()


_NAMED: set[Path] = set()


def prune(root: Path, *, keep: int, current: str) -> None:
    """Delete all but the `keep` most recently committed checkpoints; never `current`. Called only
    once `current` is committed and durable. Entries named `step_*` that rltool did not write are
    named once and left alone."""
    dirs, junk = step_entries(root)
    for path, why in junk:
        if path not in _NAMED:
            _NAMED.add(path)
            print(f"checkpoint: {path} is not a checkpoint rltool wrote ({why}); left alone")
    for old in newest_first(dirs)[keep:]:
        if old.name != current:
            gone = root / f"{TMP_PREFIX}pruned-{old.name}"
            os.rename(old, gone)  # atomic: a crash mid-delete leaves debris, never a half step_N
            faults.point("ckpt:prune")
            shutil.rmtree(gone)
