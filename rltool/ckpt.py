"""Checkpoints that survive a crash at any point, and finding them again on resume.

Layout of a run directory:

    checkpoints/step_000012/   trainer_state.pt, config.yaml, and per trainable actor
      actors/<name>/           model/ (HF weights + tokenizer), optimizer.pt, scheduler.pt; with LoRA
                               also adapter/ (PEFT); under ZeRO-3 zero/ (DeepSpeed shards) instead of
                               optimizer.pt, adapter/
    checkpoints/latest         text file holding "step_000012"
    final/<name>/              each trained actor's model alone, for `actors.path=outputs/<run>/final/<name>`

A frozen actor is not saved: its weights are its `path`. Checkpoints written before actors had
names (model/ directly in step_N/) still resume as the actor `policy`.

With LoRA, model/ and final/ hold the merged weights (W + BA) as a plain HF model, so vLLM, `rltool
eval` and `from_pretrained` load them like any other; adapter/ is what resume loads onto the base
(actors.path), so the adapter and the optimizer state (adapter parameters only) continue exactly.

Each checkpoint is written into `checkpoints/.tmp-step_N-<rand>/`, every file and directory in it
fsynced, then renamed into place and the rename fsynced (rltool/durable.py): the rename is the
commit, so a directory named `step_N` is complete, after a killed process or a power cut alike.
`latest` is replaced (atomically, fsynced) only after that, and older checkpoints are pruned only
after both. A crash at any moment leaves the previous checkpoint intact, plus at worst a `.tmp-*`
directory that the next save deletes. Resume reads `latest`; when it is missing, empty, garbage or
names a step that is not there, resume takes the highest `step_N` instead and says so in one line.
Each phase of a write has a fault-injection point (rltool/faults.py) for the tests that kill it there.

trainer_state.pt holds plain data (tensors, numbers, strings, lists, dicts; numpy arrays allowed)
and is loaded with `weights_only=True`: a foreign checkpoint cannot run pickled code on resume.

Under DeepSpeed ZeRO-3 every rank calls `save_checkpoint` / `save_final`: `model/` is gathered block
by block and written by rank 0, `zero/` holds each rank's shard of the parameters and Adam state
(DeepSpeed's own format, in the temporary directory rank 0 created), and rank 0 renames the directory
into place once every rank has written. All machines must see the run directory.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from rltool import dist, faults, parallel
from rltool.durable import fsync_dir, fsync_tree, write_atomic
from rltool.actors.lora import is_peft, save_merged
from rltool.actors.save import save_plain

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
ZERO, ZERO_TAG = "zero", "state"  # ZeRO-3 runs: DeepSpeed's sharded checkpoint in step_N/zero/state/
EXPECTED = "expected a run directory with checkpoints/ or a checkpoints/step_N directory"


def step_name(step: int) -> str:
    """Zero-padded so that `ls` and string sorting agree with step order."""
    return f"{STEP_PREFIX}{step:06d}"


ACTORS = "actors"


def actor_dir(ckpt: Path, name: str) -> Path:
    """Actor `name`'s part of a checkpoint (the checkpoint itself in the layout before named actors)."""
    return Path(ckpt) / ACTORS / name if (Path(ckpt) / ACTORS).is_dir() else Path(ckpt)


def saved_actors(ckpt: Path) -> list[str]:
    """Names of the actors a checkpoint holds (["policy"] in the layout before named actors)."""
    root = Path(ckpt) / ACTORS
    return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else ["policy"]


def model_dir(actor: Path) -> Path:
    """Where the caller loads an actor's model from: `from_pretrained(model_dir(actor_dir(ckpt, name)))`."""
    return Path(actor) / "model"


def adapter_dir(actor: Path) -> Path | None:
    """The PEFT adapter of a LoRA actor's checkpoint, None for a full fine-tuning one."""
    path = Path(actor) / "adapter"
    return path if path.is_dir() else None


def save_checkpoint(run_dir: Path, step: int, *, actors: list, trainer_state: dict, config_yaml: str,
                    keep_last: int) -> Path:
    """Write `run_dir/checkpoints/step_N/` atomically, point `latest` at it, prune to `keep_last`.

    `actors`: the trainable actors (each with .name, .model, .tokenizer, .optimizer, .scheduler).
    `trainer_state` is saved as given: the caller puts in the step, data position, `rng_state()`,
    algorithm state and metrics history (plain data: see `load_trainer_state`; `rng_states()` for
    every rank's RNGs). Returns the checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINTS
    name = step_name(step)
    main = dist.rank() == 0
    tmp = None
    if main:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(root)
        # No cleanup on failure: an exception and a SIGKILL leave the same `.tmp-*` debris, and the
        # next save removes both the same way.
        tmp = tempfile.mkdtemp(dir=root, prefix=f"{TMP_PREFIX}{name}-")
    tmp = Path(dist.broadcast(tmp))  # ZeRO-3: every rank writes its shard here (one filesystem for all machines)
    for actor in actors:
        _save_actor(tmp / ACTORS / actor.name, actor, main)
    faults.point("ckpt:actors")
    final = root / name
    if main:
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        faults.point("ckpt:trainer_state")
    # every rank's shards are written before the directory is renamed into place; a rank that died
    # leaves the others here until hardware.timeout_s, then they fail too (nothing is committed)
    dist.barrier()
    missing = dist.broadcast(_missing_shards(tmp, actors, step) if main else None)
    if missing:  # on every rank: none waits at the barrier below for a commit that will not come
        raise RuntimeError(missing)
    if main:
        fsync_tree(tmp)  # the files' data is on disk before the name that says "complete" is
        if final.exists():  # same step saved twice (resumed from an older checkpoint into this run)
            _replace_dir(tmp, final)
        else:
            os.rename(tmp, final)  # atomic on POSIX: the directory appears complete or not at all
        fsync_dir(root)  # the commit: the rename itself is durable
        faults.point("ckpt:rename")
        _write_atomic(root / LATEST, name)
        faults.point("ckpt:latest")
        _prune(root, keep=keep_last, current=name)  # only now: the new checkpoint is durable
    dist.barrier()  # no rank reads or writes checkpoints/ before the rename is done
    return final


def _missing_shards(tmp: Path, actors: list, step: int) -> str | None:
    """Under ZeRO-3 every rank's optimizer shard of every actor must be there; else the message
    naming the ranks whose shard is missing (the save then fails; nothing is committed)."""
    world = dist.world_size()
    for actor in actors:
        state = tmp / ACTORS / actor.name / ZERO / ZERO_TAG
        if not parallel.is_deepspeed(actor.model):
            continue
        have = {p.name for p in state.glob("*optim_states.pt")} if state.is_dir() else set()
        missing = [r for r in range(world) if not any(f"zero_pp_rank_{r}_" in n for n in have)]
        if missing:
            return (f"checkpoint step {step}: actor {actor.name!r} has no ZeRO shard from rank(s) "
                    f"{', '.join(map(str, missing))} in {state}; not committed, the previous checkpoint stands")
    return None


def _save_actor(path: Path, actor, main: bool) -> None:
    """One trainable actor's weights, optimizer and LR schedule (collective under ZeRO-3)."""
    model = actor.model
    path.mkdir(parents=True, exist_ok=True)
    _save_model(path / "model", model, actor.tokenizer)
    if parallel.is_deepspeed(model):  # DeepSpeed's own checkpoint: each rank's shard of the parameters and Adam state
        model.save_checkpoint(str(path / ZERO), tag=ZERO_TAG)
    elif main:
        if is_peft(model):
            model.save_pretrained(path / "adapter")  # adapter_config.json + adapter_model.safetensors
        torch.save(actor.optimizer.state_dict(), path / "optimizer.pt")
    if main:
        torch.save(actor.scheduler.state_dict(), path / "scheduler.pt")


def save_final(run_dir: Path, actors: list) -> Path:
    """Write `run_dir/final/<name>/` (model + tokenizer only) for each actor atomically, replacing an
    older final/. Collective under ZeRO-3 (the weights are gathered block by block); rank 0 writes."""
    run_dir, main, tmp = Path(run_dir), dist.rank() == 0, None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(run_dir, f"{TMP_PREFIX}final-*")
        tmp = tempfile.mkdtemp(dir=run_dir, prefix=f"{TMP_PREFIX}final-")
    tmp = Path(dist.broadcast(tmp))
    for actor in actors:
        _save_model(tmp / actor.name, actor.model, actor.tokenizer)
    final = run_dir / "final"
    if main:
        if final.exists():
            _replace_dir(tmp, final)
        else:
            os.rename(tmp, final)
    dist.barrier()
    return final


def resolve_checkpoint(path: str) -> Path:
    """A run dir (via checkpoints/latest), a checkpoints/ dir, or a step_N dir -> the step_N dir.

    A run's newest complete step_N is taken; `latest` normally names it. When it does not (missing,
    empty, garbage, naming a step that is not there or an older one: a crash between the commit
    rename and the pointer update, or between the two renames of `_replace_dir`), one line says so.
    Older checkpoints are resumed by naming their step_N directory.
    Raises FileNotFoundError with one message naming `path` and what was expected.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"resume={path}: no such directory; {EXPECTED}")
    if p.name.startswith(STEP_PREFIX):
        if not _complete(p):
            raise FileNotFoundError(f"resume={path}: no trainer_state.pt in this step directory; {EXPECTED}")
        return p
    for root in (p / CHECKPOINTS, p):
        latest = root / LATEST
        if not (latest.is_file() or any(_complete(d) for d in _step_dirs(root))):
            continue
        try:
            name = latest.read_text().strip() if latest.is_file() else ""
        except (OSError, UnicodeDecodeError):
            name = "\ufffd"
        found = [d for d in _step_dirs(root) if _complete(d)]
        if not found:
            raise FileNotFoundError(f"resume={path}: {latest} names {name!r}, which is missing or incomplete, "
                                    f"and no complete checkpoint is beside it; {EXPECTED}")
        if name != found[-1].name:  # a crash between commit and pointer update, a lost or garbled file
            valid = name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit()
            said = ("is missing or empty" if not name else
                    f"names {name!r}" + ("" if valid and _complete(root / name) else ", which is missing or incomplete"))
            _say_once(f"resume: {latest} {said}; using the newest complete checkpoint, {found[-1].name}")
        return found[-1]
    raise FileNotFoundError(f"resume={path}: no checkpoints/latest found; {EXPECTED}")


def _step_dirs(root: Path) -> list[Path]:
    """root's step_N directories in step order (names that do not parse are not checkpoints)."""
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.name.startswith(STEP_PREFIX) and d.name[len(STEP_PREFIX):].isdigit()]
    return sorted(dirs, key=lambda d: int(d.name[len(STEP_PREFIX):]))


def _complete(d: Path) -> bool:
    """Committed: only the final rename gives a directory its step_N name, after every file was
    fsynced. trainer_state.pt is checked as well, for directories made by hand or by an old rltool."""
    return d.is_dir() and (d / "trainer_state.pt").is_file()


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """resolve_checkpoint runs at validation and again in train(): the fallback is said once."""
    if line not in _SAID and os.environ.get("RANK", "0") == "0":
        _SAID.add(line)
        print(line)


def check_resumable(path: str, zero3: bool) -> Path:
    """`resolve_checkpoint`, plus: a ZeRO-3 checkpoint (DeepSpeed shards in zero/) resumes only under
    ZeRO-3, a single-process one (optimizer.pt) only in one process. Raises FileNotFoundError."""
    ckpt = resolve_checkpoint(path)
    sharded = any((actor_dir(ckpt, name) / ZERO).is_dir() for name in saved_actors(ckpt))
    if sharded != zero3:
        saved, now = ("ZeRO-3", "one process") if sharded else ("one process", "ZeRO-3")
        raise FileNotFoundError(f"resume={path}: saved by a {saved} run, resumed as {now}; resume with the hardware "
                                f"profile it was saved with (its model/ loads anywhere as actors.path)")
    return ckpt


def load_trainer_state(ckpt: Path, pickled: bool = False) -> dict:
    """The dict passed to `save_checkpoint`, read with `weights_only=True`: tensors, numbers,
    strings, lists, tuples, dicts and numpy arrays load; anything that would run code (a pickled
    class or function) is refused with one line. Raises ValueError naming the file."""
    path = Path(ckpt) / "trainer_state.pt"
    if pickled:  # the PPO loop's environment states are pickled objects: only resume your own runs
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a plain-data trainer state (refused: weights_only loading; {first[:160]})") from None


def _numpy_globals() -> list:
    """What unpickling a numpy array needs (data, not code)."""
    core = getattr(np, "_core", None) or np.core
    kinds = [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                         np.uint32, np.uint64, np.float16, np.float32, np.float64)]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *kinds]


def load_optimizer(actor: Path, optimizer, model=None) -> None:
    """Restore an actor's optimizer state in place (`actor`: its `actor_dir`). `load_state_dict` moves
    tensors to each param's device. Under ZeRO-3, DeepSpeed restores each rank's shard of the
    parameters and of Adam's state."""
    if parallel.is_deepspeed(model):
        model.load_checkpoint(str(Path(actor) / ZERO), tag=ZERO_TAG, load_optimizer_states=True,
                              load_lr_scheduler_states=False)
        return
    optimizer.load_state_dict(torch.load(Path(actor) / "optimizer.pt", map_location="cpu", weights_only=True))


def load_scheduler(actor: Path, scheduler) -> None:
    """Restore an actor's LR-scheduler state in place (for LambdaLR the lambda itself comes from the config)."""
    scheduler.load_state_dict(torch.load(Path(actor) / "scheduler.pt", map_location="cpu", weights_only=True))


def rng_state() -> dict:
    """Every RNG a step can draw from, so a resumed run samples what the uninterrupted one would.
    Plain data only (numpy's state as a tensor), so `weights_only=True` loads it.

    This process's state; `rng_states()` gathers every rank's.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(d: dict) -> None:
    """Inverse of `rng_state`. A CUDA state saved on a GPU run is ignored on a CPU-only resume."""
    random.setstate(d["python"])
    n = d["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)
    torch.set_rng_state(d["torch"])
    if d["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])


def rng_states() -> list[dict]:
    """`rng_state()` of every rank, in rank order (collective): each rank samples its own prompts'
    completions and dropout, so a resume under several ranks needs each rank's own state back."""
    return dist.all_gather_objects(rng_state())


def set_rng_states(saved) -> None:
    """Inverse of `rng_states` on each rank. A checkpoint from before per-rank states (one dict)
    restores that one state on every rank, as before; a different world size is refused."""
    if isinstance(saved, dict):
        set_rng_state(saved)
        return
    if len(saved) != dist.world_size():
        raise ValueError(f"checkpoint holds the RNG states of {len(saved)} ranks; this run has {dist.world_size()}")
    set_rng_state(saved[dist.rank()])


def _save_model(path: Path, model, tokenizer) -> None:
    # Safetensors is the default in transformers>=4.35 and the only format in 5.x (which dropped
    # the `safe_serialization` flag). A PEFT model is saved merged: a plain HF directory.
    if parallel.is_deepspeed(model):  # ZeRO-3: gathered block by block (collective), rank 0 writes
        state, inner = parallel.full_state_dict(model), parallel.unwrap(model)
        if state is not None:
            save_plain(inner.get_base_model() if is_peft(inner) else inner, state, path)
            tokenizer.save_pretrained(path)
        return
    if is_peft(model):
        save_merged(model, path)
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, text + "\n")  # readers see the old content or the new, never a half-written file


OLD_MARK = "-old-"
"""`.tmp-<name>-old-<rand>/<name>`: a committed directory moved aside by `_replace_dir`."""


def _replace_dir(new: Path, old: Path) -> None:
    """Swap `new` into `old`'s place. POSIX cannot rename over a non-empty directory, so the old
    one is moved aside first. A crash between the two renames leaves no `old`, but its copy aside
    is put back by the next `_remove_stale_tmp` (never deleted while it is the only copy)."""
    aside = Path(tempfile.mkdtemp(dir=old.parent, prefix=f"{TMP_PREFIX}{old.name}{OLD_MARK}"))
    os.rename(old, aside / old.name)
    os.rename(new, old)
    fsync_dir(old.parent)
    shutil.rmtree(aside)


def _remove_stale_tmp(root: Path, pattern: str = f"{TMP_PREFIX}*") -> None:
    """Debris of interrupted saves: half-written `.tmp-*` directories go; a committed directory
    that `_replace_dir` had moved aside goes back to its name when nothing took its place."""
    for stale in root.glob(pattern):
        if stale.is_dir() and OLD_MARK in stale.name:
            for moved in stale.iterdir():
                if not (root / moved.name).exists():
                    os.rename(moved, root / moved.name)
                    fsync_dir(root)
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def _prune(root: Path, *, keep: int, current: str) -> None:
    """Delete all but the `keep` highest-numbered step dirs; never `current`, even when a resume
    from an older checkpoint makes it lower-numbered than dirs left over from the first attempt.
    Called only once `current` is committed and durable."""
    steps = _step_dirs(root)
    for old in steps[:-keep] if keep > 0 else steps:
        if old.name != current:
            gone = root / f"{TMP_PREFIX}pruned-{old.name}"
            os.rename(old, gone)  # atomic: a crash mid-delete leaves debris, never a half step_N
            faults.point("ckpt:prune")
            shutil.rmtree(gone)
