"""Checkpoints that survive a crash at any point, and finding them again on resume.

Layout of a run directory:

    checkpoints/step_000012/   model/ (HF weights + tokenizer), optimizer.pt, scheduler.pt,
                               trainer_state.pt, config.yaml; with LoRA also adapter/ (PEFT);
                               under ZeRO-3 zero/ (DeepSpeed shards) instead of optimizer.pt, adapter/
    checkpoints/latest         text file holding "step_000012"
    final/                     the trained model alone, for `actors.path=outputs/<run>/final`

With LoRA, model/ and final/ hold the merged weights (W + BA) as a plain HF model, so vLLM, `rltool
eval` and `from_pretrained` load them like any other; adapter/ is what resume loads onto the base
(actors.path), so the adapter and the optimizer state (adapter parameters only) continue exactly.

Each checkpoint is written into `checkpoints/.tmp-step_N-<rand>/` and renamed into place; `latest`
is replaced only after that rename. A process killed at any moment therefore leaves the previous
checkpoint and `latest` intact, plus at worst a `.tmp-*` directory that the next save deletes.
Limits: this is atomic against a crashed process, not against power loss (files are not fsynced).

Under DeepSpeed ZeRO-3 every rank calls `save_checkpoint` / `save_final`: `model/` is gathered block
by block and written by rank 0, `zero/` holds each rank's shard of the parameters and Adam state
(DeepSpeed's own format, in the temporary directory rank 0 created), and rank 0 renames the directory
into place once every rank has written. All machines must see the run directory.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from rltool import dist, parallel
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


def model_dir(ckpt: Path) -> Path:
    """Where the caller loads the model from: `from_pretrained(model_dir(ckpt))`."""
    return Path(ckpt) / "model"


def adapter_dir(ckpt: Path) -> Path | None:
    """The PEFT adapter of a LoRA checkpoint, None for a full fine-tuning one."""
    path = Path(ckpt) / "adapter"
    return path if path.is_dir() else None


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, scheduler,
                    trainer_state: dict, config_yaml: str, keep_last: int) -> Path:
    """Write `run_dir/checkpoints/step_N/` atomically, point `latest` at it, prune to `keep_last`.

    `trainer_state` is saved as given: the caller puts in the step, data position, `rng_state()`,
    algorithm state and metrics history. Returns the checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINTS
    name = step_name(step)
    main, sharded = dist.rank() == 0, parallel.is_deepspeed(model)
    tmp = None
    if main:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(root)
        # No cleanup on failure: an exception and a SIGKILL leave the same `.tmp-*` debris, and the
        # next save removes both the same way.
        tmp = tempfile.mkdtemp(dir=root, prefix=f"{TMP_PREFIX}{name}-")
    tmp = Path(dist.broadcast(tmp))  # ZeRO-3: every rank writes its shard here (one filesystem for all machines)
    _save_model(tmp / "model", model, tokenizer)
    if sharded:  # DeepSpeed's own checkpoint: each rank's shard of the parameters and Adam state
        model.save_checkpoint(str(tmp / ZERO), tag=ZERO_TAG)
    elif main:
        if is_peft(model):
            model.save_pretrained(tmp / "adapter")  # adapter_config.json + adapter_model.safetensors
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    final = root / name
    if main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        dist.barrier()  # every shard is written before the directory is renamed into place
        if final.exists():  # same step saved twice (resumed from an older checkpoint into this run)
            _replace_dir(tmp, final)
        else:
            os.rename(tmp, final)  # atomic on POSIX: the directory appears complete or not at all
        _write_atomic(root / LATEST, name)
        _prune(root, keep=keep_last, current=name)
    else:
        dist.barrier()
    dist.barrier()  # no rank reads or writes checkpoints/ before the rename is done
    return final


def save_final(run_dir: Path, model, tokenizer) -> Path:
    """Write `run_dir/final/` (model + tokenizer only) atomically, replacing an older one.
    Collective under ZeRO-3 (the weights are gathered block by block); rank 0 writes."""
    run_dir, main, tmp = Path(run_dir), dist.rank() == 0, None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(f"{TMP_PREFIX}final-*"):
            shutil.rmtree(stale)
        tmp = tempfile.mkdtemp(dir=run_dir, prefix=f"{TMP_PREFIX}final-")
    tmp = Path(dist.broadcast(tmp))
    _save_model(tmp, model, tokenizer)
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

    Raises FileNotFoundError with one message naming `path` and what was expected.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"resume={path}: no such directory; {EXPECTED}")
    if p.name.startswith(STEP_PREFIX):
        if not (p / "trainer_state.pt").is_file():
            raise FileNotFoundError(f"resume={path}: no trainer_state.pt in this step directory; {EXPECTED}")
        return p
    for root in (p / CHECKPOINTS, p):
        if (root / LATEST).is_file():
            name = (root / LATEST).read_text().strip()
            if not (root / name / "trainer_state.pt").is_file():
                raise FileNotFoundError(f"resume={path}: {root / LATEST} names {name!r}, which is missing or incomplete")
            return root / name
    raise FileNotFoundError(f"resume={path}: no checkpoints/latest found; {EXPECTED}")


def check_resumable(path: str, zero3: bool) -> Path:
    """`resolve_checkpoint`, plus: a ZeRO-3 checkpoint (DeepSpeed shards in zero/) resumes only under
    ZeRO-3, a single-process one (optimizer.pt) only in one process. Raises FileNotFoundError."""
    ckpt = resolve_checkpoint(path)
    if (ckpt / ZERO).is_dir() != zero3:
        saved, now = ("ZeRO-3", "one process") if (ckpt / ZERO).is_dir() else ("one process", "ZeRO-3")
        raise FileNotFoundError(f"resume={path}: saved by a {saved} run, resumed as {now}; resume with the hardware "
                                f"profile it was saved with (its model/ loads anywhere as actors.path)")
    return ckpt


def load_trainer_state(ckpt: Path) -> dict:
    """The dict passed to `save_checkpoint`.

    weights_only=False because it holds numpy RNG arrays and caller-defined algorithm state,
    which the safe unpickler rejects. Only resume from checkpoints you (or your runs) wrote.
    """
    return torch.load(Path(ckpt) / "trainer_state.pt", map_location="cpu", weights_only=False)


def load_optimizer(ckpt: Path, optimizer, model=None) -> None:
    """Restore optimizer state in place. `load_state_dict` moves tensors to each param's device.
    Under ZeRO-3, DeepSpeed restores each rank's shard of the parameters and of Adam's state."""
    if parallel.is_deepspeed(model):
        model.load_checkpoint(str(Path(ckpt) / ZERO), tag=ZERO_TAG, load_optimizer_states=True,
                              load_lr_scheduler_states=False)
        return
    optimizer.load_state_dict(torch.load(Path(ckpt) / "optimizer.pt", map_location="cpu", weights_only=True))


def load_scheduler(ckpt: Path, scheduler) -> None:
    """Restore LR-scheduler state in place (for LambdaLR the lambda itself comes from the config)."""
    scheduler.load_state_dict(torch.load(Path(ckpt) / "scheduler.pt", map_location="cpu", weights_only=True))


def rng_state() -> dict:
    """Every RNG a step can draw from, so a resumed run samples what the uninterrupted one would.

    Per process: under several processes the checkpoint holds the main process's state only.
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(d: dict) -> None:
    """Inverse of `rng_state`. A CUDA state saved on a GPU run is ignored on a CPU-only resume."""
    random.setstate(d["python"])
    np.random.set_state(d["numpy"])
    torch.set_rng_state(d["torch"])
    if d["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])


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
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)  # readers see the old content or the new, never a half-written file


def _replace_dir(new: Path, old: Path) -> None:
    """Swap `new` into `old`'s place. POSIX cannot rename over a non-empty directory, so the old
    one is moved aside first: a crash between the two renames leaves no `old`, only debris."""
    aside = Path(tempfile.mkdtemp(dir=old.parent, prefix=f"{TMP_PREFIX}{old.name}-old-"))
    os.rename(old, aside / old.name)
    os.rename(new, old)
    shutil.rmtree(aside)


def _remove_stale_tmp(root: Path) -> None:
    for stale in root.glob(f"{TMP_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def _prune(root: Path, *, keep: int, current: str) -> None:
    """Delete all but the `keep` highest-numbered step dirs; never `current`, even when a resume
    from an older checkpoint makes it lower-numbered than dirs left over from the first attempt."""
    steps = sorted(root.glob(f"{STEP_PREFIX}*"), key=lambda d: int(d.name[len(STEP_PREFIX):]))
    for old in steps[:-keep] if keep > 0 else steps:
        if old.name != current:
            shutil.rmtree(old)
