"""Held-out evaluation: greedy first-attempt accuracy (strict / flexible / math-verify), format rate,
length, and pass@n when eval.n > 1. Never touches training state (ERL memory included)."""
from __future__ import annotations

import json
from pathlib import Path

from rltool import dist
from rltool.config import Config
from rltool.rewards.registry import REWARDS, call_reward
from rltool.rollout.engine import Sampling
from rltool.rollout.prompts import encode_chat, fitting_examples

ACCURACY = {"accuracy_strict": "gsm8k_strict", "accuracy_flexible": "gsm8k_flexible",
            "accuracy_math_verify": "math_verify", "format_rate": "format"}


def evaluate(engine, tokenizer, env, cfg: Config) -> tuple[dict[str, float], list[dict]]:
    """Metrics over every held-out problem; each rank generates for its share (rows: this rank's)."""
    # Prompts longer than rollout.max_prompt_len are left out (never cut) and counted in eval/skipped_long.
    held_out, too_long = fitting_examples(env.eval_examples()[: cfg.eval.size or None], env.messages, tokenizer,
                                          cfg.rollout.max_prompt_len)
    examples = held_out[dist.rank()::dist.world_size()]
    prompts = [encode_chat(tokenizer, env.messages(e), cfg.rollout.max_prompt_len) for e in examples]
    greedy = engine.generate(prompts, Sampling(greedy=True, max_new_tokens=cfg.eval.max_new_tokens))
    totals = dict.fromkeys(ACCURACY, 0.0)
    rows, length = [], 0
    for example, (c,) in zip(examples, greedy):
        row = {"id": example.id, "question": example.question, "answer": example.answer, "completion": c.text}
        for key, name in ACCURACY.items():
            value, _ = call_reward(REWARDS[name], c.text, example)
            row[key] = value or 0.0  # math_verify's None (unparseable gold) counts as not solved
            totals[key] += row[key]
        length += len(c.token_ids)
        rows.append(row)
    n = max(len(held_out), 1)
    metrics = {f"eval/{k}": dist.sum_over_ranks(v) / n for k, v in totals.items()}
    metrics["eval/len"] = dist.sum_over_ranks(length) / n
    metrics["eval/skipped_long"] = float(too_long)
    if cfg.eval.n > 1:
        metrics[f"eval/pass@{cfg.eval.n}"] = dist.sum_over_ranks(pass_at_n(engine, prompts, examples, cfg)) / n
    return metrics, rows


def pass_at_n(engine, prompts, examples, cfg: Config) -> int:
    """How many problems have at least one of eval.n samples correct under the success reward."""
    sampled = engine.generate(prompts, Sampling(n=cfg.eval.n, temperature=cfg.eval.temperature,
                                                max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed))
    success = REWARDS[cfg.reward.success]
    solved = sum(any((call_reward(success, c.text, e)[0] or 0) > 0 for c in cs) for e, cs in zip(examples, sampled))
    return solved


def evaluate_main(cfg: Config) -> dict[str, float]:
    """`rltool eval actors.path=outputs/<run>/final`: load the model into vLLM and evaluate it."""
    from rltool.actors.embedded import resolve_model_path
    from rltool.actors.load import load_model, load_tokenizer
    from rltool.envs import make_env
    from rltool.hardware import resolve_hardware
    from rltool.rollout import make_engine

    hw = resolve_hardware(cfg.hardware)
    path = resolve_model_path(cfg.actors.path)
    tokenizer = load_tokenizer(path)
    model = load_model(path, hw.dtype, trainable=False, device=hw.device) if cfg.rollout.engine == "hf" else None
    engine = make_engine(cfg, hw, model, tokenizer, path)
    env = make_env(cfg.env)
    try:
        metrics, rows = evaluate(engine, tokenizer, env, cfg)
    finally:
        engine.close()  # `rltool eval -m` evaluates the next model in this process
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"model": path, "env": cfg.env.name, "n": len(rows), **metrics}, indent=2))
    with open(out / "eval_samples.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"eval of {path} on {cfg.env.name} ({len(rows)} held-out problems):")
    for k, v in metrics.items():
        print(f"  {k:28s} {v:.4f}")
    print(f"written: {out / 'eval.json'}")
    return metrics
