"""The model card `final/README.md`: what a user uploads to a hub beside the weights, as it is.

Base model, algorithm and its key settings, data, steps, the final eval metrics (the run's own reward
first: eval/success, eval/reward; then the env's own measures), the training
curves (copied next to the card) and the command that reproduces the run. Everything comes from
the resolved config and metrics.jsonl, so the card says what ran, not what was meant to.
"""
from __future__ import annotations

import dataclasses
import shlex
import shutil
import sys
from pathlib import Path

from rltool.config import Config, EnvConfig
from rltool.metrics import read_metrics

HUB_IDS = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Embedded models by their hub id (the embedded copy is the Q4_1 GGUF dequantized: the card says so)."""


def reproduce_command() -> str:
    """`rltool train <overrides>` as this run was started (Hydra's task overrides; the run directory
    left out), or the process's own arguments outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig not set: train() called directly (tests, scripts)
        overrides = sys.argv[1:]
    keep = [o for o in overrides if not o.startswith(("hydra.run.dir=", "output_dir=", "hydra.sweep."))]
    return " ".join(["rltool", "train", *map(shlex.quote, keep)])


def write_model_card(final_dir: Path, run_dir: Path, cfg: Config, final_metrics: dict[str, float]) -> Path:
    """Write final_dir/README.md (and copy run_dir/curves.png beside it); returns the card's path."""
    final_dir, run_dir = Path(final_dir), Path(run_dir)
    a, t, r, e = cfg.algo, cfg.trainer, cfg.rollout, cfg.env
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    trained = max((row["step"] for row in rows if "time/step" in row), default=0)  # every train step logs it
    base = HUB_IDS.get(cfg.lead_actor.path, cfg.lead_actor.path)
    front = ["---", "library_name: transformers", f"tags: [rltool, {a.name}, reinforcement-learning]"]
    if "/" in base and not Path(base).exists():  # a hub id: the hub links the card to it
        front.append(f"base_model: {base}")
    lines = front + ["---", "", f"# {run_dir.name}", "",
                     f"{base} trained with **{a.name}** by [rltool](https://pypi.org/project/rltool/) "
                     f"for {trained} steps on `{e.name}`.", ""]
    if cfg.lead_actor.path in HUB_IDS:
        lines += [f"The starting weights are rltool's embedded copy of {base} (its Q4_1 GGUF, dequantized to "
                  "float32), not the original release.", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    settings = {
        "algorithm": f"{a.name} (rollout {a.rollout}, advantage {a.advantage}, loss {a.loss}, aggregation {a.agg}, "
                     f"ratio {a.ratio_level})",
        "clip eps low / high": f"{a.clip_eps_low} / {a.clip_eps_high}",
        "KL": f"coef {a.kl_coef}" + (f", {a.kl_estimator} in the {a.kl_placement}" if a.kl_coef else ""),
        "iterations per rollout": a.iterations,
        "steps": f"{trained} of {t.max_steps}",
        "prompts per step x group": f"{t.prompts_per_step} x {t.group_size}",
        "learning rate": f"{t.lr} ({t.lr_schedule}, warmup {t.warmup_steps})",
        "sampling": f"temperature {r.temperature}, top-p {r.top_p}, max {r.max_new_tokens} new tokens",
        "LoRA": f"r={cfg.lead_actor.lora.r}, alpha={cfg.lead_actor.lora.alpha} (merged into these weights)"
                if cfg.lead_actor.lora.r else "none (full fine-tuning)",
        "reward": reward_description(cfg),
        "data": f"{e.name} ({e.eval_size} held-out problems never trained on, split seed {e.seed}; "
                + ", ".join(f"{k} {v}" for k, v in env_keys(e).items()) + ")",
        "seed": cfg.seed,
    }
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    lines += ["", "## Evaluation", ""]
    if final_metrics:
        n = min(cfg.eval.size or e.eval_size, e.eval_size)
        lines += [f"{n} held-out `{e.name}` problems after step {trained} (greedy, first attempt).", ""]
        if "eval/success" in final_metrics:
            lines += [f"`eval/success`: the share of answers the success reward `{cfg.reward.success}` scores above 0; "
                      f"`eval/reward`: their mean reward ({reward_description(cfg)}).", ""]
        lines += ["| metric | value |", "|---|---|"]
        first = {k: final_metrics[k] for k in ("eval/success", "eval/reward") if k in final_metrics}
        lines += [f"| {k} | {v:.4g} |" for k, v in (first | final_metrics).items()]
    else:
        lines += ["No final evaluation was run (eval.enabled=false)."]
    if (run_dir / "curves.png").is_file():
        shutil.copyfile(run_dir / "curves.png", final_dir / "curves.png")
        lines += ["", "![training curves](curves.png)"]
    lines += ["", "## Reproduce", "", "```bash", reproduce_command(), "```", "",
              "The resolved config is `config.yaml` in the run directory; `rltool eval actors.path=<this directory>` "
              "re-runs the evaluation.", ""]
    card = final_dir / "README.md"
    card.write_text("\n".join(lines))
    return card


def reward_description(cfg: Config) -> str:
    """The reward group's terms, or what the algorithm's rollout scores itself (its REWARD, e.g. AGRL's)."""
    from rltool.algos.rollouts import ROLLOUTS

    own = ROLLOUTS[cfg.algo.rollout].REWARD
    if own:
        return own
    return ", ".join(f"{term.name} x {term.weight}" for term in cfg.reward.terms) + (
        f", length penalty {cfg.reward.length_penalty}" if cfg.reward.length_penalty else "")


def env_keys(env: EnvConfig) -> dict:
    """The environment's own keys (those its schema adds to EnvConfig's): where its data came from."""
    common = {f.name for f in dataclasses.fields(EnvConfig)}
    return {f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.name not in common}
