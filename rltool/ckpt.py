"""Checkpoints that survive a crash at any point, and finding them again on resume.

Layout of a run directory (rltool/ckpt_layout.py):

    checkpoints/step_000012/   trainer_state.pt, config.yaml, checkpoint.json, and per trainable actor
      actors/<name>/           model/ (HF weights + tokenizer), optimizer.pt, scheduler.pt; with LoRA
                               also adapter/ (PEFT); under ZeRO-3 zero/ (DeepSpeed shards) instead of
                               optimizer.pt, adapter/
                               (an encoder agent, rltool/ppo_train.py: agent.pt and optimizer.pt instead
                               of actors/)
    checkpoints/latest         text file holding "step_000012"
    final/<name>/              each trained actor's model alone, for `actors.path=outputs/<run>/final/<name>`

A frozen actor is not saved: its weights are its `path`. Checkpoints written before actors had
names (model/ directly in step_N/) still resume as the actor `policy`, and only as it.

With LoRA, model/ and final/ hold the merged weights (W + BA) as a plain HF model, so vLLM, `rltool
eval` and `from_pretrained` load them like any other; adapter/ is what resume loads onto the base
(actors.path), so the adapter and the optimizer state (adapter parameters only) continue exactly.

Both loops write their checkpoints through `commit_checkpoint`, each adding only its own files.
Every checkpoint and final/ is committed by rltool/ckpt_commit.py (temporary directory, every file
and directory fsynced, rename, parent fsynced; `latest` and pruning after that); which one a resume
takes, and whether it is whole, is rltool/ckpt_check.py. Each phase of a write has a fault-injection
point (rltool/faults.py) for the tests that kill it there.

trainer_state.pt holds plain data (tensors, numbers, strings, bytes, lists, dicts; numpy arrays
allowed) and is loaded with `weights_only=True`: a foreign checkpoint cannot run pickled code on resume.

Under DeepSpeed ZeRO-3 every rank calls `save_checkpoint` / `save_final`: `model/` is gathered block
by block and written by rank 0, `zero/` holds each rank's shard of the parameters and Adam state
(DeepSpeed's own format, in the temporary directory rank 0 created), and rank 0 renames the directory
into place once every rank has written. All machines must see the run directory.
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rltool import dist, faults, train_backend
from rltool.actors.lora import is_peft, save_merged
from rltool.actors.save import save_plain
from rltool.ckpt_check import Damaged, check_resumable, damage, resolve_checkpoint, shard_refusal  # noqa: F401
from rltool.ckpt_commit import begin, finish
from rltool.ckpt_layout import (ACTORS, CHECKPOINTS, LATEST, STEP_PREFIX, TMP_PREFIX, TRAINER_STATE,  # noqa: F401
                                ZERO, ZERO_TAG, actor_dir, adapter_dir, model_dir, saved_actors, step_name)


def save_checkpoint(run_dir: Path, step: int, *, actors: list, trainer_state: dict, config_yaml: str,
                    keep_last: int) -> Path:
    """The LM loop's checkpoint: each trainable actor's weights, optimizer and LR schedule
    (`actors`: each with .name, .model, .tokenizer, .optimizer, .scheduler), committed by
    `commit_checkpoint` with `trainer_state` (data position, algorithm state, metrics history).
    Collective under ZeRO-3. Returns the checkpoint directory."""
    def write(tmp: Path, main: bool) -> None:
        for actor in actors:
            _save_actor(tmp / ACTORS / actor.name, actor, main)
        # every rank's shards are written before the directory is renamed into place; a rank that died
        # leaves the others here until hardware.timeout_s, then they fail too (nothing is committed)
        dist.barrier()
        missing = dist.broadcast(_missing_shards(tmp, actors, step) if main else None)
        if missing:  # on every rank: none waits at a barrier for a commit that will not come
            raise RuntimeError(missing)

    return commit_checkpoint(run_dir, step, write, trainer_state=trainer_state, config_yaml=config_yaml,
                             keep_last=keep_last)


def commit_checkpoint(run_dir: Path, step: int, write: Callable[[Path, bool], None], *, trainer_state: dict,
                      config_yaml: str, keep_last: int) -> Path:
    """Both loops' one checkpoint writer: `run_dir/checkpoints/step_N/` written atomically, `latest`
    pointed at it, pruned to `keep_last`.

    `write(tmp, main)` adds the loop's own files to the temporary directory (the LM loop: each actor's
    weights and optimizer, on every rank under ZeRO-3; the PPO loop: agent.pt, optimizer.pt). Then the
    main process writes trainer_state.pt, {"step": step, "rng": rng_states()} with the loop's
    `trainer_state` (plain data: see `load_trainer_state`) over it, and config.yaml; so either loop
    resumes its step and every rank's RNGs alike (`load_trainer_state`, `set_rng_states`). Collective
    (the RNG states are gathered from every rank). Returns the checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINTS
    main = dist.rank() == 0
    state = {"step": step, "rng": rng_states()} | trainer_state
    tmp = Path(dist.broadcast(str(begin(root, step_name(step))) if main else None))  # ZeRO-3: every rank writes here
    write(tmp, main)
    faults.point("ckpt:actors")
    if main:
        torch.save(state, tmp / TRAINER_STATE)
        (tmp / "config.yaml").write_text(config_yaml)
        faults.point("ckpt:trainer_state")
    final = root / step_name(step)
    if main:
        finish(tmp, final, keep_last=keep_last)
    dist.barrier()  # no rank reads or writes checkpoints/ before the rename is done
    return final


def _missing_shards(tmp: Path, actors: list, step: int) -> str | None:
    """Under ZeRO-3 every rank's optimizer shard of every actor must be there; else the message
    naming the ranks whose shard is missing (the save then fails; nothing is committed)."""
    world = dist.world_size()
    for actor in actors:
        state = tmp / ACTORS / actor.name / ZERO / ZERO_TAG
        if not train_backend.is_deepspeed(actor.model):
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
    if main and is_peft(model) and not train_backend.is_deepspeed(model):
        model.save_pretrained(path / "adapter")  # adapter_config.json + adapter_model.safetensors
    save_optimizer(path, actor.optimizer, model)
    if main:
        torch.save(actor.scheduler.state_dict(), path / "scheduler.pt")


def save_optimizer(path: Path, optimizer, model=None) -> None:
    """`path`/optimizer.pt, read back by `load_optimizer` (both loops). Under ZeRO-3 DeepSpeed's own
    checkpoint instead, each rank's shard of the parameters and Adam state (collective)."""
    if train_backend.is_deepspeed(model):
        model.save_checkpoint(str(Path(path) / ZERO), tag=ZERO_TAG)
    elif dist.rank() == 0:
        torch.save(optimizer.state_dict(), Path(path) / "optimizer.pt")


def save_final(run_dir: Path, actors: list) -> Path:
    """Write `run_dir/final/<name>/` (model + tokenizer only) for each actor, committed like a checkpoint
    (fsynced, renamed), replacing an older final/. Collective under ZeRO-3 (the weights are gathered
    block by block); rank 0 writes."""
    run_dir, main = Path(run_dir), dist.rank() == 0
    tmp = Path(dist.broadcast(str(begin(run_dir, "final")) if main else None))
    for actor in actors:
        _save_model(tmp / actor.name, actor.model, actor.tokenizer)
    final = run_dir / "final"
    if main:
        finish(tmp, final)
    dist.barrier()
    return final


def load_trainer_state(ckpt: Path) -> dict:
    """The dict passed to `save_checkpoint`, read with `weights_only=True`: tensors, numbers, strings,
    bytes, lists, tuples, dicts and numpy arrays load; anything that would run code (a pickled class or
    function) is refused, and a damaged file is named as damaged. Raises ValueError naming the file."""
    path = Path(ckpt) / TRAINER_STATE
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a plain-data trainer state (refused: weights_only loading; {first[:160]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: damaged trainer state (truncated or corrupt: {first[:160]})") from None


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
    if train_backend.is_deepspeed(model):
        for shard in sorted((Path(actor) / ZERO).rglob("*.pt")):  # DeepSpeed unpickles them with weights_only=False
            refused = shard_refusal(shard)
            if refused:
                raise ValueError(f"{shard} {refused}")
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
    if train_backend.is_deepspeed(model):  # ZeRO-3: gathered block by block (collective), rank 0 writes
        state, inner = train_backend.full_state_dict(model), train_backend.unwrap(model)
        if state is not None:
            save_plain(inner.get_base_model() if is_peft(inner) else inner, state, path)
            tokenizer.save_pretrained(path)
        return
    if is_peft(model):
        save_merged(model, path)
    else:
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
