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
from rltool.config import ACTOR_KEYS, Config, ConfigError, check_finite, register_configs
from rltool.guard import RunAborted
from rltool.loops import LOOPS
from rltool.sweep import run_job

COMMANDS = ("train", "eval", "validate")
USAGE = "usage: rltool {train,eval,validate} [key=value ...] [-m] [-v] [--help]"
HELP = f"""{USAGE}

Reinforcement-learning post-training of language models, configured with Hydra overrides.

commands:
  train      train (GRPO family, ERL, multi-actor envs; algo=encoder_ppo: encoder agents)
  eval       evaluate a model on the environment's held-out split
  validate   check a config and print it with its plan; loads no model and needs no GPU

examples:
  rltool train                                  SmolLM2-135M on GSM8K with GRPO, offline on CPU
  rltool train env=arithmetic trainer.max_steps=20
  rltool validate hardware=gpu8                 check an 8-GPU run from any machine
  rltool train plugins=[my_task.py] env.name=my_env reward.success=my_reward
  rltool train -m trainer.lr=1e-6,3e-6          a sweep (multirun)

options:
  -v, --verbose   engine, DeepSpeed and library logs on the console too (always in <run_dir>/logs/)
  -m, --multirun  one run per combination of comma-separated values
  --help          this text; `rltool train --help` lists the config groups and every key

plugins=[file.py, pkg.module] imports your code before the config is checked, so the environments,
rewards and rollouts it registers can be named like rltool's own; installed packages register through
the entry-point group "rltool.plugins"."""
VERBOSE = False
"""-v / --verbose: engine, DeepSpeed and library logs on the console too (they always go to <run_dir>/logs/)."""


def conf_dir() -> str:
    """The repo's top-level conf/ in a checkout; the copy shipped inside the wheel otherwise."""
    repo = Path(__file__).resolve().parent.parent / "conf"
    return str(repo if repo.is_dir() else Path(__file__).resolve().parent / "conf")


def to_config(cfg: DictConfig) -> Config:
    """Typed Config with every __post_init__ check run, plus its training loop's checks; raises ConfigError.
    Plugins are imported first, so the names they register count in every check."""
    from rltool.plugins import load_plugins

    from rltool.schemas import narrow_env

    load_plugins(list(OmegaConf.select(cfg, "plugins", default=None) or []),
                 OmegaConf.select(cfg, "reward.module", default=None, throw_on_missing=False))
    check_finite(OmegaConf.to_container(cfg, resolve=False))  # before any range check reads a nan
    try:
        cfg.env = narrow_env(cfg.env)  # the chosen environment's own keys (rltool/schemas.py)
        config: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # OmegaConf wraps exceptions raised in __post_init__
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else None
        raise cause or ConfigError(str(e).splitlines()[0]) from None
    if config.algo.loop not in LOOPS:
        raise ConfigError(f"algo.loop={config.algo.loop!r}: unknown; valid: {', '.join(LOOPS.names())}")
    LOOPS[config.algo.loop].check(config)  # lm: check_lm_config below; ppo: rltool/loops.py
    check_resume(config)
    check_loggers(config)
    return config


def check_loggers(config: Config) -> None:
    """trainer.logger=wandb without wandb installed would fail only after the model has loaded."""
    import importlib.util

    if "wandb" in config.trainer.logger and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"trainer.logger={config.trainer.logger!r}: wandb is not installed; pip install wandb, "
                          "or use trainer.logger=tensorboard or none")


def check_lm_config(config: Config) -> None:
    """The language-model loop's checks: environment, reward, registries, device, model path."""
    from rltool.envs import validate_env_config
    from rltool.rewards.score import env_columns, validate_reward_config

    validate_env_config(config.env)
    validate_reward_config(config.reward, env_columns(config.env))  # imports reward.module first
    check_registries(config)
    check_device(config)
    for actor in config.actors.values():
        check_model_path(actor.path, f"actors.{actor.name}.path")
    check_env_actors(config)
    check_resume(config, actors=[a.name for a in config.actors.values() if a.trainable])  # the actors it saved


def check_env_actors(config: Config) -> None:
    """Each part of the environment is played by the algorithm's rollout (the rollout's `plays` names the
    kinds of episode it drives, the env's `episodes` its kind), and its own `check_actors` accepts the env
    keys and actor names (round-spec, answer_from, drafter, system prompts), all before any model loads.
    At least one actor trains."""
    from rltool.algos.rollouts import ROLLOUTS
    from rltool.envs import ENVS

    names, parts = list(config.actors), [ENVS[p] for p in config.env.name.split("+")]
    if not any(a.trainable for a in config.actors.values()):
        raise ConfigError("actors: every actor is frozen (trainable=false); at least one must train")
    plays = ROLLOUTS[config.algo.rollout].plays
    for name, env in zip(config.env.name.split("+"), parts):
        if env.episodes not in plays:
            able = [r for r in ROLLOUTS.names() if env.episodes in ROLLOUTS[r].plays]
            raise ConfigError(f"algo.rollout={config.algo.rollout!r} (algo={config.algo.name}) does not play env {name}'s "
                              f"{env.episodes} episodes, only {', '.join(plays)} ones; rollouts that "
                              f"play {env.episodes}: {', '.join(able) or 'none'}")
    for env in dict.fromkeys(parts):
        env.check_actors(config.env, names)


def check_resume(config: Config, actors: list[str] | None = None) -> None:
    """resume= names a checkpoint this run can continue: found, every file it will load whole (else the newest
    intact one, said in one line), saved with the same kind of launch and, given `actors`, the same trainable
    actors. Nothing in it is unpickled beyond plain data (rltool/ckpt_check.py)."""
    from rltool.ckpt_check import check_resumable

    if config.resume:
        try:
            check_resumable(config.resume, zero3=config.hardware.zero_stage == 3, actors=actors)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None


def check_registries(config: Config) -> None:
    """Algorithm pieces are looked up in their registries (importing them costs ~1 s of torch import), for
    the run's algo and each actor's own overrides: the valid names are what is registered, plugins' too."""
    from rltool.algos.advantages import ADVANTAGES
    from rltool.algos.kl import KL_ESTIMATORS
    from rltool.algos.losses import AGG_MODES, POLICY_LOSSES
    from rltool.algos.rollouts import ROLLOUTS

    algos = [("algo", config.algo)] + [(f"actors.{n}.algo", config.actor_algo(n)) for n in config.actors
                                       if config.actors[n].algo]
    for prefix, a in algos:
        for key, value, registry in (("advantage", a.advantage, ADVANTAGES), ("loss", a.loss, POLICY_LOSSES),
                                     ("rollout", a.rollout, ROLLOUTS), ("kl_estimator", a.kl_estimator, KL_ESTIMATORS),
                                     ("agg", a.agg, AGG_MODES)):
            if value not in registry:
                valid = registry.names() if hasattr(registry, "names") else sorted(registry)
                raise ConfigError(f"{prefix}.{key}={value!r}: unknown; valid: {', '.join(valid)}")
    ROLLOUTS[config.algo.rollout].check(config)


def check_device(config: Config) -> None:
    """hardware=auto resolves to cpu on a machine without a GPU: what needs CUDA is refused here too.
    A profile that names cuda on a machine without one is `missing_gpu`'s (validate plans it anyway)."""
    import torch

    h = config.hardware
    if h.zero_stage == 3 and config.rollout.engine == "hf":
        raise ConfigError("rollout.engine=hf: HF generate does not run on ZeRO-3 sharded weights; use rollout.engine=vllm")
    for actor in config.actors.values():
        if actor.qlora and h.device == "auto" and not torch.cuda.is_available():
            raise ConfigError(f"actors.{actor.name}.qlora=True: QLoRA needs a CUDA GPU (bitsandbytes 4-bit) and none is "
                              "visible; use lora.r=16 on CPU")


def missing_gpu(config: Config) -> str | None:
    """The line saying this machine cannot run a profile that asks for CUDA, or None. `rltool validate`
    prints it under the plan (a GPU config can be checked on a laptop); train and eval refuse with it."""
    h = config.hardware
    if h.device != "cuda" or _has_gpu():
        return None
    return f"hardware={h.name}: asks for device=cuda but no GPU is visible here"


def validate_report(config: Config) -> None:
    """What `rltool validate` prints besides the config: the LM loop's batch plan, and whether this
    machine can run it."""
    if config.algo.loop == "lm":
        from rltool.hardware import Hardware
        from rltool.plan import batch_plan

        h = config.hardware
        device = h.device if h.device != "auto" else ("cuda" if _has_gpu() else "cpu")
        dtype = h.dtype if h.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
        print(batch_plan(config, Hardware(device, dtype, h.num_processes, h)))
    note = missing_gpu(config)
    if note:
        print(f"rltool: note: {note}; the config is valid, but `rltool train` refuses it on this machine", file=sys.stderr)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def check_model_path(path: str, key: str = "actors.path") -> None:
    """A local directory, `embedded:<name>`, or a hub id `org/name`; anything else is a typo. A path that
    starts like one (`./x`, `../x`, `/x`, `~/x`) is local and must exist, whatever its shape."""
    import re

    from rltool.actors.embedded import EMBEDDED, PREFIX

    if path.startswith(PREFIX):
        if path[len(PREFIX):] not in EMBEDDED:
            raise ConfigError(f"{key}={path!r}: unknown embedded model; valid: "
                              + ", ".join(PREFIX + n for n in EMBEDDED))
    elif os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            inside = sorted(d for d in os.listdir(path) if os.path.exists(os.path.join(path, d, "config.json")))
            hint = f"; it holds the actors {', '.join(inside)}: name one, e.g. {os.path.join(path, inside[0])}" if inside else ""
            raise ConfigError(f"{key}={path!r}: directory has no config.json (expected a HF model directory){hint}")
    elif path.startswith((".", "/", "~")) or os.path.isabs(path):
        raise ConfigError(f"{key}={path!r}: no such directory (a local path; a hub id is org/name)")
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        raise ConfigError(f"{key}={path!r}: no such directory; expected a local HF directory, a hub id "
                          "(org/name) or embedded:smollm2-135m-instruct")


def run(command: str, cfg: DictConfig) -> dict[str, float] | None:
    """Validate, then train or evaluate; returns the final eval metrics (None for validate). Raises ConfigError."""
    if launch.launched() and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch ... -m rltool train`:
        cfg.hardware.num_processes, cfg.hardware.zero_stage = int(os.environ["WORLD_SIZE"]), 3  # its world counts
    config = to_config(cfg)
    if command != "validate" and missing_gpu(config):  # validate plans a GPU config on any machine
        raise ConfigError(f"{missing_gpu(config)}; use hardware=cpu or hardware=auto")
    if not config.output_dir:
        config.output_dir = HydraConfig.get().runtime.output_dir
    if command == "train" and not launch.launched():  # launched ranks: global rank 0 does it in train()
        own_run_dir(config)
    if command == "validate":
        print(OmegaConf.to_yaml(cfg, resolve=True))  # the values the run would use
        validate_report(config)
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


def own_run_dir(config: Config) -> None:
    """A fresh run claims a directory no other run uses; a resume from an older checkpoint first
    moves the run's newer ones aside (rltool/run_dir.py). Ranks a launcher started do this in
    train(), on global rank 0 (`run_dir.own_launched_run_dir`)."""
    from rltool import run_dir

    run_dir.own_run_dir(config)


def routed_logs(config: Config):
    """rltool.logs.routed_logs for this process: the run's directory (on resume, the run it continues,
    which train() writes into), this rank's file; `-v` / hydra.verbose keep everything on the console too."""
    from rltool.logs import routed_logs as routed

    run_dir = config.output_dir
    if config.resume:  # both loops continue in the run the checkpoint came from
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
    memory_plan(config, hw, {a.name: Shape.of(resolve_model_path(a.path)) for a in config.actors.values()},
                device_memory(hw.device))
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


PATH_KEYS = ("resume", "output_dir", "reward.module", "hydra.run.dir", "hydra.sweep.dir")


def quote_path_value(arg: str) -> str:
    """`resume=<dir of a sweep job>`: the job dirs Hydra names after their overrides hold `=` and `,`, which
    its override grammar reads as syntax. A path-valued key whose value does not parse gets quoted."""
    key, eq, value = arg.partition("=")
    if not eq or not (key.lstrip("+") in PATH_KEYS or key.endswith(".path")) or value[:1] in ("'", '"'):
        return arg
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(arg)
        return arg
    except HydraException:
        return f"{key}='{value.replace(chr(39), chr(92) + chr(39))}'"


def rewrite_overrides(args: list[str]) -> list[str]:
    """Actor keys are set with Hydra's add-or-override (`++`): `actors` maps names to actors, and an actor
    a preset defines holds only the keys it sets, so `actors.solver.lr=1e-5` must be able to add `lr`
    (rltool.config.to_actor then checks every key). `actors.lora.r=16` is short for
    `actors.policy.lora.r=16`, so commands written when `actors` held one model keep working.
    `env=a+b` composes environments (rltool/envs/compose.py): the last part's YAML, env.name=a+b.
    A path a sweep wrote (`multirun/.../0-trainer.lr=1e-4,seed=1`) is quoted for Hydra's parser."""
    out = []
    for arg in map(quote_path_value, args):
        if arg.startswith("env=") and "+" in arg:  # env=a+b: the last part's YAML, every part by name
            out += [f"env={arg[4:].split('+')[-1]}", f"env.name={arg[4:]}"]
            continue
        prefix, _, rest = arg.partition("actors.")
        if prefix.strip("+") or not rest or "=" not in rest:
            out.append(arg)
            continue
        name = rest.split("=")[0].split(".")[0]
        out.append(f"++actors.{'policy.' if name in ACTOR_KEYS else ''}{rest}")
    return out


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help", "help"):
        print(HELP)
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    global VERBOSE
    VERBOSE = any(a in ("-v", "--verbose") for a in sys.argv[1:])  # Hydra's parser does not know it
    sys.argv = rewrite_overrides([a for a in sys.argv if a not in ("-v", "--verbose")])
    try:
        preload_plugins(sys.argv[1:])  # before composition: the keys they register are composed against
    except ConfigError as e:
        print(f"rltool: config error: {e}", file=sys.stderr)
        sys.exit(2)
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
            if command == "validate":
                drop_unused_run_dir(hc)
        except ConfigError as e:
            if os.environ.get("RANK", "0") == "0":  # launched ranks all find it; one says it
                print(f"rltool: config error: {e}", file=sys.stderr)
            drop_unused_run_dir(hc)
            sys.exit(2)
        except RunAborted as e:  # a failing reward, non-finite updates, a hung phase: saved, then stopped
            if os.environ.get("RANK", "0") == "0":
                print(f"rltool: stopped: {e}", file=sys.stderr)
            sys.exit(3)
        return None

    # Hydra prints its composition errors in ~17 lines (listing internal schema names) and exits 1;
    # with HYDRA_FULL_ERROR it raises them instead, and hydra_error_line makes them one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        entry()
    except Exception as e:
        line = hydra_error_line(e, sys.argv[1:])
        if line is None:
            raise
        print(f"rltool: config error: {line}", file=sys.stderr)
        sys.exit(2)


def preload_plugins(overrides: list[str]) -> None:
    """The command line's `plugins=[...]` and `reward.module=...`, imported before Hydra composes, so an
    environment or rollout they register brings its own config keys (a plugin named only in a YAML file is
    imported later, at validation: its components count, its own keys do not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from rltool.plugins import load_plugins

    wanted = {"plugins": [], "reward.module": None}
    for arg in overrides:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key not in wanted:
            continue
        try:
            value = OverridesParser.create().parse_override(arg).value()
        except HydraException:
            continue  # Hydra says what is wrong with it, in one line
        if not isinstance(value, (str, list)):
            continue  # a sweep over plugins (-m): each job imports its own at validation
        wanted[key] = value if key == "reward.module" else list(value) if isinstance(value, list) else [value]
    load_plugins([str(p) for p in wanted["plugins"]], wanted["reward.module"])


def drop_unused_run_dir(hc) -> None:
    """validate and a refused run leave no empty `outputs/<algo>-<env>-<time>/` (rltool/run_dir.py)."""
    if not launch.launched():  # launched ranks write into the directory their launcher chose
        from rltool.run_dir import remove_if_unused

        remove_if_unused(hc.runtime.output_dir)


RENAMED = {
    "algo=ppo": "is now algo=encoder_ppo (PPO for encoder agents; LM algorithms: grpo, dapo, dr_grpo, gspo, rloo, "
                "reinforce_pp, erl)",
}
"""Old spellings of config options, answered with their new name."""


def hydra_error_line(e: Exception, overrides: list[str]) -> str | None:
    """Hydra's composition errors as one line naming the override and what is allowed; None for
    anything else (a crash keeps its traceback)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, name = e.missing_cfg_file.rsplit("/", 1)
        if f"{group}={name}" in RENAMED:
            return f"{group}={name}: {RENAMED[f'{group}={name}']}"
        valid = [o for o in (e.options or []) if not o.startswith("base_")]  # base_<group>: the schema, not a choice
        return f"{group}={name}: unknown {group} option; valid: {', '.join(valid)}"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: cannot parse this override ({(str(e).splitlines() or [''])[0]}); expected key=value"
    if not isinstance(e, ConfigCompositionException):
        return None
    cause = e.__cause__ or e.__context__
    if not isinstance(cause, OmegaConfBaseException):
        return (str(e).splitlines() or ["composition failed"])[0]
    key = getattr(cause, "full_key", None) or ""
    names = [(o, o.lstrip("+~").split("=", 1)[0]) for o in overrides]
    given = next((o for o, k in names if k == key), None) or next((o for o, k in names if k.startswith(key + ".")), key)
    reason = (str(cause).splitlines() or [""])[0]
    return f"{given}: {reason}{did_you_mean(cause)}"


def did_you_mean(cause: OmegaConfBaseException) -> str:
    """'; did you mean group_size?' for a mistyped key of a structured config."""
    import dataclasses
    import difflib

    kind, key = getattr(cause, "object_type", None), getattr(cause, "key", None)
    if not (dataclasses.is_dataclass(kind) and isinstance(key, str)):
        return ""
    names = [f.name for f in dataclasses.fields(kind)]
    close = difflib.get_close_matches(key, names, n=1) if key not in names else []
    return f"; did you mean {close[0]}?" if close else ""


if __name__ == "__main__":
    main()
