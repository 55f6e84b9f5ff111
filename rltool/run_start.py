"""A run starts: seeded, in its run directory, its config written, told where it resumes from, logging.

Both training loops begin with `start_run` (rltool/train.py once its ranks can talk, rltool/ppo_train.py
first thing), so a fresh run and a resume behave the same in either: python, numpy and torch seeded;
a resume continues in the run directory its checkpoint came from; config.yaml holds the resolved
config; a config value that disagrees with the checkpoint's run gets a warning; metrics.jsonl is
appended to. Only the main process (global rank 0) writes. Claiming a fresh run's directory, and
moving a resumed run's newer checkpoints aside, happen before this (rltool/run_dir.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rltool import dist
from rltool.ckpt_check import resolve_checkpoint
from rltool.config import Config
from rltool.metrics import MetricsLog


@dataclass
class RunStart:
    run_dir: Path
    """Where config.yaml, metrics.jsonl and checkpoints/ go: on resume, the run being continued."""
    resume_from: Path | None
    """The checkpoints/step_N directory this run continues, None for a fresh run."""
    log: MetricsLog
    """metrics.jsonl (and wandb / TensorBoard); writes on the main process only."""
    main: bool
    """Global rank 0: the one process that writes logs, metrics and checkpoints."""


def start_run(cfg: Config, drift: tuple[str, ...], actor_drift: tuple[str, ...] = ()) -> RunStart:
    """Seed, find the checkpoint to resume and the run directory, write config.yaml, open the metrics log.

    `drift` (config keys) and `actor_drift` (keys of each actor, `actors.<name>.<key>`): what the loop's
    checkpoint fixed; a resume that changes one gets a warning (the checkpoint wins). Collective when a
    launcher started the ranks: they agree on the run directory."""
    seed_everything(cfg.seed)
    main = dist.rank() == 0
    run_dir, resume_from = Path(cfg.output_dir), None
    if cfg.resume:
        resume_from = resolve_checkpoint(cfg.resume)
        run_dir = resume_from.parent.parent  # keep writing into the run being continued
        if main:
            keys = [*drift, *(f"actors.{name}.{key}" for name in cfg.actors for key in actor_drift)]
            warn_config_drift(cfg, resume_from, keys)
    run_dir = Path(dist.broadcast(str(run_dir)))  # ranks started a second apart must agree on ${now:...}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml(cfg))
    log = MetricsLog(run_dir, enabled=main, logger=cfg.trainer.logger,
                     config=OmegaConf.to_container(OmegaConf.structured(cfg)), run_name=run_dir.name)
    return RunStart(run_dir, resume_from, log, main)


def seed_everything(seed: int) -> None:
    """Every global RNG a step draws from; a resume then sets them to the checkpoint's (ckpt.set_rng_states)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_yaml(cfg: Config) -> str:
    """The resolved config as written to config.yaml, in the run directory and in every checkpoint."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def warn_config_drift(cfg: Config, ckpt_dir: Path, keys: list[str]) -> None:
    """The checkpoint's config wins for what it stores; a differing seed or architecture is worth a warning."""
    saved, now = OmegaConf.load(ckpt_dir / "config.yaml"), OmegaConf.structured(cfg)
    for key in keys:
        old, new = OmegaConf.select(saved, key), OmegaConf.select(now, key)
        if old != new:
            print(f"warning: resume: {key}={new!r} differs from the checkpoint's {old!r}")

