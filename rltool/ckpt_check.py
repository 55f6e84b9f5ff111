"""Which checkpoint a resume continues, and whether every file it will load is whole.

One rule: a run directory resumes from its most recently committed intact checkpoint (commit
numbers only grow, so a branch resumed from an older step outranks whatever the abandoned branch
left; checkpoints from before commit numbers go by step). `latest` names it too, except after a
crash between the commit and the pointer update, which one line reports. A damaged checkpoint
(a file shorter than saved, a missing actor, a trainer state that does not load) is skipped with
one line naming it and why; a `step_N` directory named explicitly must itself be intact.

Nothing here runs code from the checkpoint: trainer states are read with `weights_only=True`,
safetensors headers are parsed as JSON, and DeepSpeed's shards are scanned for the classes their
pickles name (only DeepSpeed's own data classes pass) before DeepSpeed unpickles them.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from rltool.ckpt_layout import (ACTORS, CHECKPOINTS, LATEST, MANIFEST, STEP_PREFIX, TRAINER_STATE, ZERO, actor_dir,
                                newest_first, saved_actors, step_entries, step_of)

EXPECTED = "expected a run directory with checkpoints/ or a checkpoints/step_N directory"


class Damaged(FileNotFoundError):
    """A checkpoint that cannot be resumed; the message is one line naming the path and what is wrong."""


def resolve_checkpoint(path: str) -> Path:
    """A run dir, its checkpoints/ dir, or a step_N dir -> the step_N dir to resume from.
    Raises Damaged (a FileNotFoundError) with one line naming `path` and what was expected."""
    p = Path(path)
    if not p.is_dir():
        raise Damaged(f"resume={path}: no such directory; {EXPECTED}")
    if step_of(p) is not None:
        problem = damage(p)
        if problem:
            raise Damaged(f"resume={path}: {problem}; name another checkpoint or the run directory")
        return p
    for root in (p / CHECKPOINTS, p):
        dirs, junk = step_entries(root)
        if not ((root / LATEST).is_file() or dirs or junk):
            continue
        skipped = []
        for d in newest_first(dirs):
            problem = damage(d)
            if problem is None:
                for name, why in skipped:
                    _say_once(f"resume: skipped {name}: {why}")
                _check_latest(root, d)
                return d
            skipped.append((d.name, problem))
        skipped += [(d.name, why) for d, why in junk]
        said = "; ".join(f"{name}: {why}" for name, why in skipped) or "none is there"
        raise Damaged(f"resume={path}: no intact checkpoint in {root} ({said}); {EXPECTED}")
    raise Damaged(f"resume={path}: no checkpoints/latest found; {EXPECTED}")


def _check_latest(root: Path, chosen: Path) -> None:
    """`latest` is written after the commit: a crash in between, or a lost or garbled file, leaves it
    naming something else. The newest intact checkpoint stands; one line says so."""
    latest = root / LATEST
    try:
        name = latest.read_text().strip() if latest.is_file() else ""
    except (OSError, UnicodeDecodeError):
        name = "\ufffd"
    if name == chosen.name:
        return
    known = step_of(Path(name)) is not None and (root / name).is_dir()
    said = "is missing or empty" if not name else f"names {name!r}" + ("" if known else ", which is missing or incomplete")
    _say_once(f"resume: {latest} {said}; using the newest complete checkpoint, {chosen.name}")


def check_resumable(path: str, zero3: bool, actors: list[str] | None = None) -> Path:
    """`resolve_checkpoint`, plus what this run needs of it: a ZeRO-3 checkpoint (DeepSpeed shards in
    zero/) resumes only under ZeRO-3, a single-process one only in one process; `actors` (the run's
    trainable actors, None for an encoder agent) are exactly the ones saved. Raises FileNotFoundError."""
    ckpt = resolve_checkpoint(path)
    saved = saved_actors(ckpt)
    if actors is not None and sorted(actors) != saved:
        added, removed = sorted(set(actors) - set(saved)), sorted(set(saved) - set(actors))
        parts = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
        raise Damaged(f"resume={path}: {ckpt.name} holds the trainable actors {', '.join(saved) or 'none'}; this run "
                      f"has {', '.join(sorted(actors))} ({'; '.join(p for p in parts if p)}); resume with the actors "
                      "it was saved with, or start a new run from its weights (actors.<name>.path)")
    sharded = any((actor_dir(ckpt, name) / ZERO).is_dir() for name in saved)
    if sharded != zero3:
        was, now = ("ZeRO-3", "one process") if sharded else ("one process", "ZeRO-3")
        raise Damaged(f"resume={path}: saved by a {was} run, resumed as {now}; resume with the hardware "
                      f"profile it was saved with (its model/ loads anywhere as actors.path)")
    return ckpt


def damage(ckpt: Path) -> str | None:
    """What is wrong with `ckpt` (one phrase), None when every file resume loads is whole."""
    manifest = ckpt / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MANIFEST} is garbled"
        for rel, size in files.items():
            f = ckpt / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != size:
                return f"{rel} has {f.stat().st_size} bytes, {size} when saved"
    elif not (ckpt / TRAINER_STATE).is_file():
        return f"no {TRAINER_STATE}"
    if (ckpt / ACTORS).is_dir() and not saved_actors(ckpt):
        return f"{ACTORS}/ holds no actor"
    for name in saved_actors(ckpt):  # also for checkpoints from before manifests
        model = actor_dir(ckpt, name) / "model"
        if not (model / "config.json").is_file():
            return f"actor {name!r} has no model/config.json"
    for f in sorted(ckpt.rglob("*")):
        problem = _file_damage(f) if f.is_file() else None
        if problem:
            return f"{f.relative_to(ckpt)} {problem}"
    from rltool import own_pickles
    from rltool.ckpt import load_trainer_state

    try:
        state = load_trainer_state(ckpt)
        for key in [k for k in state if isinstance(k, str) and k.endswith(SIGNED)]:  # pickles: signed by us?
            signed = key[:-len(SIGNED)]
            for blob, signature in zip(state.get(signed, ()), state[key], strict=True):
                own_pickles.check(blob, signature, f"{TRAINER_STATE}[{signed!r}]")
    except ValueError as e:
        return str(e).removeprefix(f"{ckpt / TRAINER_STATE}: ")
    return None


SIGNED = "_signature"
"""trainer_state[k + "_signature"]: the signatures of the pickles in trainer_state[k] (rltool/own_pickles.py)."""


def _file_damage(f: Path) -> str | None:
    """A safetensors file shorter than its header says, a torch file whose zip directory is gone
    (truncated), a DeepSpeed shard whose pickle names a class that is not data."""
    if f.suffix == ".safetensors":
        return _safetensors_damage(f)
    if f.suffix in (".pt", ".pth") and f.name != TRAINER_STATE:  # that one is loaded whole below
        try:
            with zipfile.ZipFile(f) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            return f"is damaged (truncated or not a torch file: {e})"
        if ZERO in f.parts:
            return shard_refusal(f)
    return None


def _safetensors_damage(f: Path) -> str | None:
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
    except (OSError, ValueError, struct.error):
        header = None
    if not isinstance(header, dict):
        return "is damaged (no readable safetensors header)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"is damaged ({size} bytes; its header describes {8 + n + end})"
    return None


DEEPSPEED_DATA = ("deepspeed.runtime.fp16.loss_scaler.", "deepspeed.runtime.zero.config.",
                  "deepspeed.runtime.zero.offload_config.", "deepspeed.utils.tensor_fragment.",
                  "deepspeed.runtime.config.", "deepspeed.runtime.zero.partition_parameters.")
"""Classes DeepSpeed pickles into its ZeRO-3 shards (enums and plain attribute holders). Their
pickles rebuild them from data; no other class or function is let through."""


def shard_refusal(f: Path) -> str | None:
    """DeepSpeed loads its shards with `weights_only=False`. Before it does, the pickle is scanned
    (opcodes only, no code runs): anything it names beyond torch's safe set and DeepSpeed's data
    classes is refused."""
    import pickle

    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(f))
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        return f"is damaged ({type(e).__name__}: {str(e)[:120]})"
    foreign = [n for n in names if not (n.startswith(DEEPSPEED_DATA) or n in _NUMPY_DATA)]
    if foreign:
        return f"is refused: its pickle names {', '.join(foreign[:3])} (only data loads from a checkpoint)"
    return None


_NUMPY_DATA = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
               "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"}


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """resolve_checkpoint runs at validation and again in train(): each line is said once, by rank 0."""
    if line not in _SAID and os.environ.get("RANK", "0") == "0":
        _SAID.add(line)
        print(line)


__all__ = ["Damaged", "EXPECTED", "check_resumable", "damage", "resolve_checkpoint", "STEP_PREFIX"]
