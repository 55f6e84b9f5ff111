"""What a checkpoint directory looks like: names, paths, and which `step_*` entries are checkpoints.

No torch here: `rltool validate` and the run-directory code read layouts without loading anything.
"""
from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
SUPERSEDED = "superseded-"
"""`checkpoints/superseded-<time>/`: checkpoints of another branch of the run, kept, never resumed or pruned."""
ACTORS = "actors"
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "checkpoint.json"
"""Written last into every checkpoint: its commit number and every file's size (rltool/ckpt_commit.py)."""
ZERO, ZERO_TAG = "zero", "state"  # ZeRO-3 runs: DeepSpeed's sharded checkpoint in step_N/actors/<name>/zero/state/
LEGACY_ACTOR = "policy"
"""Checkpoints written before actors had names hold one actor's model/ directly in step_N/: this one."""


def step_name(step: int) -> str:
    """Zero-padded so that `ls` and string sorting agree with step order."""
    return f"{STEP_PREFIX}{step:06d}"


def step_of(d: Path) -> int | None:
    """12 for `step_000012`, None for anything else."""
    name = Path(d).name
    tail = name[len(STEP_PREFIX):]
    return int(tail) if name.startswith(STEP_PREFIX) and tail.isdigit() else None


def step_entries(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """root's `step_N` entries: (real directories, [(junk, why it is not a checkpoint)]).

    A regular file, a symlink (to a checkpoint or anywhere, looping or dangling) or a directory
    with neither a manifest nor a trainer state is not something rltool wrote: never resumed,
    pruned or replaced."""
    dirs, junk = [], []
    if not Path(root).is_dir():
        return dirs, junk
    for d in Path(root).iterdir():
        if step_of(d) is None:
            continue
        if d.is_symlink():
            junk.append((d, "a symlink"))
        elif not d.is_dir():
            junk.append((d, "not a directory"))
        elif not ((d / MANIFEST).is_file() or (d / TRAINER_STATE).is_file()):
            junk.append((d, f"no {TRAINER_STATE}: not a complete checkpoint"))
        else:
            dirs.append(d)
    return dirs, junk


def commit_number(d: Path) -> int:
    """The checkpoint's commit number (0 for one written before manifests, or a garbled manifest)."""
    try:
        return int(json.loads((Path(d) / MANIFEST).read_text())["commit"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def newest_first(dirs: list[Path]) -> list[Path]:
    """Most recently committed first. Commit numbers only grow within a run, so a branch resumed from an
    older checkpoint outranks whatever the abandoned branch left; step order breaks ties (old checkpoints)."""
    return sorted(dirs, key=lambda d: (commit_number(d), step_of(d)), reverse=True)


def actor_dir(ckpt: Path, name: str) -> Path:
    """Actor `name`'s part of a checkpoint. In the layout before named actors only `policy` is in it;
    any other name gets the path where it would be (absent), never the policy's weights."""
    ckpt = Path(ckpt)
    if not (ckpt / ACTORS).is_dir() and name == LEGACY_ACTOR:
        return ckpt
    return ckpt / ACTORS / name


def saved_actors(ckpt: Path) -> list[str]:
    """Names of the actors a checkpoint holds (["policy"] in the layout before named actors, [] for
    a PPO checkpoint: its agent.pt is the agent)."""
    root = Path(ckpt) / ACTORS
    if root.is_dir():
        return sorted(d.name for d in root.iterdir() if d.is_dir())
    return [LEGACY_ACTOR] if (Path(ckpt) / "model").is_dir() else []


def model_dir(actor: Path) -> Path:
    """Where the caller loads an actor's model from: `from_pretrained(model_dir(actor_dir(ckpt, name)))`."""
    return Path(actor) / "model"


def adapter_dir(actor: Path) -> Path | None:
    """The PEFT adapter of a LoRA actor's checkpoint, None for a full fine-tuning one."""
    path = Path(actor) / "adapter"
    return path if path.is_dir() else None
