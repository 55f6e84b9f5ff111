"""One run per directory: a fresh run never writes into another's, a resume never overwrites newer work.

The default run directory (`outputs/<algo>-<env>-<time>`) has one-second resolution, and
`output_dir=` can name any directory. A fresh run that wrote into a directory holding another run
would overwrite its config.yaml, append to its metrics.jsonl, replace and prune its checkpoints
and replace its final/. So a fresh run claims its directory: it creates `.rltool-run` with
O_EXCL (atomic, so two runs started in the same second cannot both win) and, when the directory
is already claimed or holds a run's files, takes the next free `<dir>-2`, `<dir>-3`, ...

Resuming from a checkpoint older than the run's newest would overwrite the newer ones step by
step (and keep_last would prune them). So they are first moved aside to
`checkpoints/superseded-<time>/`, with one line saying so: kept, never pruned, never resumed
from by accident (resume reads step_N names only); delete the directory when it is not wanted.
Hydra still writes its own `.hydra/` files into the directory it chose; only rltool's move.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rltool.config import ConfigError

CLAIM = ".rltool-run"
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.yaml", "final")
"""Any of these means a run (perhaps from before claims existed) already lives in the directory."""
STEP_PREFIX = "step_"
SUPERSEDED = "superseded-"


def claim_run_dir(path: str | os.PathLike) -> Path:
    """`path` if no run lives there yet, else the first free `path-N`; claimed for this process."""
    base = Path(path)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        candidate.mkdir(parents=True, exist_ok=True)
        if any((candidate / f).exists() for f in RUN_FILES):
            continue
        try:
            fd = os.open(candidate / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another run claimed it first (maybe in this very second)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return candidate
    raise ConfigError(f"output_dir={str(path)!r}: 10000 runs already use this name; choose another output_dir")


def step_of(d: Path) -> int | None:
    """12 for `step_000012`, None for anything else."""
    tail = d.name[len(STEP_PREFIX):]
    return int(tail) if d.name.startswith(STEP_PREFIX) and tail.isdigit() else None


def newer_checkpoints(ckpt: Path) -> list[Path]:
    """The step dirs beside `ckpt` (a checkpoints/step_N dir) with a higher step, oldest first."""
    ckpt, mine = Path(ckpt), step_of(Path(ckpt))
    if mine is None or not ckpt.parent.is_dir():
        return []
    newer = [(step_of(d), d) for d in ckpt.parent.iterdir() if d.is_dir() and (step_of(d) or -1) > mine]
    return [d for _, d in sorted(newer)]


def move_newer_aside(ckpt: Path) -> Path | None:
    """Move the checkpoints newer than `ckpt` to `checkpoints/superseded-<time>/`; returns that dir
    (None when there were none). Outside `step_*`, so neither resume nor pruning ever touch them."""
    newer = newer_checkpoints(ckpt)
    if not newer:
        return None
    aside = Path(ckpt).parent / f"{SUPERSEDED}{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for d in newer:
        os.rename(d, aside / d.name)
    return aside


HYDRA_ONLY = {".hydra", "cli.log", CLAIM}
"""What a directory holds when no run used it: Hydra's config copy, its empty log, perhaps our claim."""
REFUSED_RUN = HYDRA_ONLY | {"config.yaml", "logs"}
"""...and a run this process claimed and then refused (the memory plan): its config and empty logs."""


def remove_if_unused(path: str | os.PathLike) -> bool:
    """`rltool validate` and a run refused for its config get a Hydra run directory too; without
    this, every such call leaves an empty `outputs/<algo>-<env>-<time>/` behind. Removed only when
    it holds nothing else: empty logs, no claim but this process's, nothing beside Hydra's files
    (and, when this process claimed it, the config.yaml it wrote)."""
    d = Path(path)
    claim = d / CLAIM
    mine = claim.is_file() and claim.read_text().startswith(f"pid {os.getpid()} ")
    if not d.is_dir() or not {p.name for p in d.iterdir()} <= (REFUSED_RUN if mine else HYDRA_ONLY):
        return False
    if claim.exists() and not mine:
        return False  # another process claimed it (a run starting in the same second)
    logs = [d / "cli.log", *((d / "logs").iterdir() if (d / "logs").is_dir() else [])]
    if any(f.is_dir() or f.stat().st_size for f in logs if f.exists()):
        return False
    if (d / ".hydra").is_dir() and not {p.name for p in (d / ".hydra").iterdir()} <= {"config.yaml", "hydra.yaml",
                                                                                     "overrides.yaml"}:
        return False
    shutil.rmtree(d)
    return True
