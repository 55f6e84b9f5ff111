"""`rltool train|eval|validate [overrides]`: compose the Hydra config, validate it, hand it over.

No training logic and no heavy imports here: torch, vLLM and DeepSpeed are imported only after
the config has passed validation, so `rltool validate` and every config error are instant.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rltool import launch
from rltool.config import Config, ConfigError, register_configs
from rltool.loops import LOOPS
from rltool.sweep import run_job

COMMANDS = ("train", "eval", "validate")
USAGE = "usage: rltool {train,eval,validate} [key=value ...] [-m] [-v] [--help]"
VERBOSE = False
"""-v / --verbose: engine, DeepSpeed and library logs on the console too (they always go to <run_dir>/logs/)."""


def conf_dir() -> str:
    """The repo's top-level conf/ in a checkout; the copy shipped inside the wheel otherwise."""
    repo = Path(__file__).resolve().parent.parent / "conf"
    return str(repo if repo.is_dir() else Path(__file__).resolve().parent / "conf")


def to_config(cfg: DictConfig) -> Config:
    """Typed Config with every __post_init__ check run, plus its training loop's checks; raises ConfigError."""
    try:
        config: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # OmegaConf wraps exceptions raised in __post_init__
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else None
        raise cause or ConfigError(str(e).splitlines()[0]) from None
    if config.algo.loop not in LOOPS:
        raise ConfigError(f"algo.loop={config.algo.loop!r}: unknown; valid: {', '.join(LOOPS.names())}")
    LOOPS[config.algo.loop].check(config)  # lm: check_lm_config below; ppo: rltool/loops.py
    check_resume(config)
    return config


def check_lm_config(config: Config) -> None:
    """The language-model loop's checks: environment, reward, registries, device, model path."""
    from rltool.envs import validate_env_config
    from rltool.rewards.score import env_columns, validate_reward_config

    validate_env_config(config.env)
    validate_reward_config(config.reward, env_columns(config.env))  # imports reward.module first
    check_registries(config)
    check_device(config)
    check_model_path(config.actors.path)


def check_resume(config: Config) -> None:
    """resume= names a checkpoint this run can continue (found, and saved with the same kind of launch)."""
    from rltool.ckpt import check_resumable

    if config.resume:
        try:
            check_resumable(config.resume, zero3=config.hardware.zero_stage == 3)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None


def check_registries(config: Config) -> None:
    """Algorithm pieces are looked up in their registries (importing them costs ~1 s of torch import)."""
    from rltool.algos.advantages import ADVANTAGES
    from rltool.algos.kl import KL_ESTIMATORS
    from rltool.algos.losses import POLICY_LOSSES
    from rltool.algos.rollouts import ROLLOUTS

    a = config.algo
    for key, value, registry in (("algo.advantage", a.advantage, ADVANTAGES), ("algo.loss", a.loss, POLICY_LOSSES),
                                 ("algo.rollout", a.rollout, ROLLOUTS), ("algo.kl_estimator", a.kl_estimator, KL_ESTIMATORS)):
        if value not in registry:
            raise ConfigError(f"{key}={value!r}: unknown; valid: {', '.join(registry.names())}")


def check_device(config: Config) -> None:
    """hardware=auto resolves to cpu on a machine without a GPU: what needs CUDA is refused here too."""
    import torch

    h = config.hardware
    if h.zero_stage == 3 and config.rollout.engine == "hf":
        raise ConfigError("rollout.engine=hf: HF generate does not run on ZeRO-3 sharded weights; use rollout.engine=vllm")
    if h.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hardware={h.name}: asks for device=cuda but no GPU is visible; use hardware=cpu or hardware=auto")
    if config.actors.qlora and h.device == "auto" and not torch.cuda.is_available():
        raise ConfigError("actors.qlora=True: QLoRA needs a CUDA GPU (bitsandbytes 4-bit) and none is visible; "
                          "use actors.lora.r=16 on CPU")


def check_model_path(path: str) -> None:
    """A local directory, `embedded:<name>`, or a hub id `org/name`; anything else is a typo."""
    import re

    from rltool.actors.embedded import EMBEDDED, PREFIX

    if path.startswith(PREFIX):
        if path[len(PREFIX):] not in EMBEDDED:
            raise ConfigError(f"actors.path={path!r}: unknown embedded model; valid: "
                              + ", ".join(PREFIX + n for n in EMBEDDED))
    elif os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ConfigError(f"actors.path={path!r}: directory has no config.json (expected a HF model directory)")
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        raise ConfigError(f"actors.path={path!r}: no such directory; expected a local HF directory, a hub id "
                          "(org/name) or embedded:smollm2-135m-instruct")


def run(command: str, cfg: DictConfig) -> dict[str, float] | None:
    """Validate, then train or evaluate; returns the final eval metrics (None for validate). Raises ConfigError."""
    if launch.launched() and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch ... -m rltool train`:
        cfg.hardware.num_processes, cfg.hardware.zero_stage = int(os.environ["WORLD_SIZE"]), 3  # its world counts
    config = to_config(cfg)
    if not config.output_dir:
        config.output_dir = HydraConfig.get().runtime.output_dir
    if command == "validate":
        print(OmegaConf.to_yaml(cfg, resolve=True))  # the values the run would use
        print("rltool: config OK", file=sys.stderr)
        return None
    # vLLM must run in-process (colocated with the trainer); set before vllm is imported.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM cuts torch to 1 thread "for serving" unless OMP_NUM_THREADS is set; the trainer shares the process.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if command == "train":
        if launch.needs_launch(config.hardware):  # hardware=cpu_zero3|gpu8|multinode: accelerate starts the ranks
            return run_launched(config)
        with routed_logs(config):  # library and engine logs -> <run_dir>/logs/rank<r>.log
            return LOOPS[config.algo.loop].train(config)
    if config.algo.loop != "lm":
        raise ConfigError(f"algo.loop={config.algo.loop!r}: rltool eval evaluates language models; an encoder agent "
                          "is evaluated during training and at its end (eval/* in metrics.jsonl)")
    from rltool.evaluate import evaluate_main

    with routed_logs(config):
        return evaluate_main(config)


def routed_logs(config: Config):
    """rltool.logs.routed_logs for this process: the run's directory (on resume, the run it continues,
    which train() writes into), this rank's file; `-v` / hydra.verbose keep everything on the console too."""
    from rltool.logs import routed_logs as routed

    run_dir = config.output_dir
    if config.resume and config.algo.loop == "lm":
        from rltool.ckpt import resolve_checkpoint

        run_dir = resolve_checkpoint(config.resume).parent.parent
    return routed(run_dir, int(os.environ.get("RANK", "0")), VERBOSE or bool(HydraConfig.get().verbose))


def run_launched(config: Config) -> dict[str, float]:
    """This command again under `accelerate launch`, writing into this run's directory; returns the
    final eval metrics the ranks logged (a multirun tables them)."""
    from rltool.actors.embedded import resolve_model_path
    from rltool.hardware import resolve_hardware
    from rltool.metrics import read_metrics
    from rltool.plan import Shape, device_memory, memory_plan

    # Before any rank starts: fill the embedded-model cache once, refuse what cannot fit in one line.
    hw = resolve_hardware(config.hardware)
    memory_plan(config, hw, Shape.of(resolve_model_path(config.actors.path)), device_memory(hw.device))
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith(("hydra.run.dir=", "output_dir="))]
    run_dir = config.output_dir.replace("\\", "\\\\").replace("'", "\\'")  # a sweep's job dirs hold '=' and ','
    rc = launch.run(config.hardware, ["train", *(["-v"] if VERBOSE else []), *overrides, f"hydra.run.dir='{run_dir}'"])
    if rc and hc.mode != RunMode.MULTIRUN:  # the ranks printed what went wrong
        sys.exit(rc)
    if rc:
        raise RuntimeError(f"accelerate launch exited with code {rc}")
    metrics = Path(config.output_dir) / "metrics.jsonl"
    rows = [r for r in read_metrics(metrics) if any(k.startswith("eval/") for k in r)] if metrics.is_file() else []
    return {k: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else {}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    global VERBOSE
    VERBOSE = any(a in ("-v", "--verbose") for a in sys.argv[1:])  # Hydra's parser does not know it
    sys.argv = [a for a in sys.argv if a not in ("-v", "--verbose")]
    register_configs()
    sys.argv[0] = f"rltool {command}"

    @hydra.main(config_path=conf_dir(), config_name="config", version_base="1.3")
    def entry(cfg: DictConfig) -> float | None:
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:  # one job of a sweep: its failure must not end the sweep
            label = f"job {hc.job.num} ({' '.join(hc.overrides.task)})"
            return run_job(lambda: run(command, cfg), label, Path(hc.runtime.output_dir), cfg.sweep_metric)
        try:
            run(command, cfg)
        except ConfigError as e:
            if os.environ.get("RANK", "0") == "0":  # launched ranks all find it; one says it
                print(f"rltool: config error: {e}", file=sys.stderr)
            sys.exit(2)
        return None

    entry()


if __name__ == "__main__":
    main()
