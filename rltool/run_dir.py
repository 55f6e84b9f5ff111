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

Both happen once per run, before any rank reads the directory: in the process the user started,
or, when a launcher started the ranks (`accelerate launch ... -m rltool train`,
scripts/launch_slurm.sh), on global rank 0 once the ranks can talk, the others waiting for it.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rltool.ckpt_commit import supersede
from rltool.ckpt_layout import step_entries, step_of
from rltool.config import Config, ConfigError

CLAIM = ".rltool-run"
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.yaml", "final")
"""Any of these means a run (perhaps from before claims existed) already lives in the directory."""
OWNED = "RLTOOL_RUN_DIR_OWNED"
"""Set by the process that owned the run directory for the ranks it launches: they must not own it again."""


def own_run_dir(config: Config) -> None:
    """A fresh run claims a directory no other run uses (config.output_dir becomes it); a resume from an
    older checkpoint first moves the run's newer ones aside, so continuing never overwrites them."""
    if config.resume:
        from rltool.ckpt_check import resolve_checkpoint

        ckpt = resolve_checkpoint(config.resume)
        aside = move_newer_aside(ckpt)
        if aside is not None:
            print(f"resume: {ckpt.name} is older than this run's newest checkpoints; they are kept in {aside}")
    else:
        wanted = config.output_dir
        config.output_dir = str(claim_run_dir(wanted))
        if config.output_dir != wanted:
            print(f"run dir: {wanted} holds another run; writing to {config.output_dir}")
    os.environ[OWNED] = str(Path(config.output_dir).resolve())  # inherited by the ranks this process launches


def own_launched_run_dir(config: Config) -> None:
    """In ranks a launcher started (collective): global rank 0 owns the directory, unless the process that
    launched them already did; every rank then takes rank 0's output_dir. The broadcast waits for rank 0,
    so no rank reads the directory while it is being claimed or checkpoints are being moved."""
    from rltool import dist

    if dist.rank() == 0 and os.environ.get(OWNED) != str(Path(config.output_dir).resolve()):
        own_run_dir(config)
    config.output_dir = dist.broadcast(config.output_dir)


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


def newer_checkpoints(ckpt: Path) -> list[Path]:
    """The checkpoints beside `ckpt` (a checkpoints/step_N dir) with a higher step, oldest first."""
    ckpt, mine = Path(ckpt), step_of(Path(ckpt))
    if mine is None:
        return []
    return sorted((d for d in step_entries(ckpt.parent)[0] if step_of(d) > mine), key=step_of)


def move_newer_aside(ckpt: Path) -> Path | None:
    """Move the checkpoints newer than `ckpt` to `checkpoints/superseded-<time>/`; returns that dir
    (None when there were none). Outside `step_*`, so neither resume nor pruning ever touch them."""
    newer = newer_checkpoints(ckpt)
    return supersede(newer) if newer else None


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
