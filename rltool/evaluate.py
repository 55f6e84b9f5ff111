"""Held-out evaluation on the run's own reward: greedy first attempts scored by `reward.success`
(eval/success) and by the weighted terms (eval/reward), each env's own measures (`env.eval_metrics()`,
e.g. gsm8k's strict / flexible / math-verify accuracies), length, and pass@n when eval.n > 1. Never
touches training state (ERL memory included)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rltool import dist
from rltool.config import Config
from rltool.rewards.registry import CONTEXT, Row
from rltool.rewards.score import Scorer
from rltool.engines.engine import Sampling
from rltool.engines.prompts import encode_chat, fitting_examples


def evaluate(actors: dict, env, cfg: Config) -> tuple[dict[str, float], list[dict]]:
    """Metrics over every held-out problem; each rank answers its share (rows: this rank's).

    The answer to a problem is `env.answers`: the policy's greedy completion, or, in an environment of
    several actors, the answer its extraction rule picks from their greedy conversation. A composed
    environment also gets each part's metrics (eval/<part>/...). An environment with its own measure of
    success (`env.evaluate` not None, e.g. article_curriculum's value log-probs) is evaluated by it instead."""
    own = env.evaluate(actors, cfg)
    if own is not None:
        return own
    policy = actors[cfg.lead_actor.name]
    # Prompts longer than rollout.max_prompt_len are left out (never cut) and counted in eval/skipped_long.
    held_out, too_long = fitting_examples(held_out_examples(env, cfg.eval.size), env.messages, policy.tokenizer,
                                          cfg.rollout.max_prompt_len)
    examples = held_out[dist.rank()::dist.world_size()]
    answers = env.answers(actors, examples, cfg)
    # a reward that misbehaves: that answer is unscored, counted. Feedback text is no measure: not computed.
    reward_cfg = replace(cfg.reward, feedback=None) if cfg.reward.feedback is not None else cfg.reward
    scorer = Scorer(reward_cfg, cfg.eval.max_new_tokens)
    own_reward = scores_bare_answers(scorer)
    rows = scored_rows(scorer, env, examples, answers, own_reward)
    metrics = summarise(rows, len(held_out), "eval/", env.eval_metrics(), own_reward)
    for part in env.parts if len(env.parts) > 1 else ():
        mine = [r for r, e in zip(rows, examples) if env.owner(e) is part]
        total = sum(env.owner(e) is part for e in held_out)
        metrics |= summarise(mine, total, f"eval/{part.name}/", part.eval_metrics(), own_reward)
    metrics["eval/skipped_long"] = float(too_long)
    if cfg.eval.n > 1 and all(p.episodes == "single_turn" for p in env.parts):  # the policy's own prompt, n times
        prompts = [encode_chat(policy.tokenizer, env.messages(e), cfg.rollout.max_prompt_len) for e in examples]
        metrics[f"eval/pass@{cfg.eval.n}"] = dist.sum_over_ranks(pass_at_n(policy.engine, prompts, examples, cfg,
                                                                           scorer)) / max(len(held_out), 1)
    measures = [name for p in env.parts for name in p.eval_metrics().values()]
    run_reward = [*(t.name for t in cfg.reward.terms), cfg.reward.success] if own_reward else []
    metrics |= reward_failures(scorer, [*run_reward, *measures])
    scorer.close()
    return metrics, rows


def scores_bare_answers(scorer: Scorer) -> bool:
    """Whether the run's rewards can score a greedy answer alone: one that needs the team's conversation or
    the actor scored (CONTEXT) cannot, so eval/success and eval/reward are left out, with a warning."""
    needy = [name for name, r in scorer.rewards.items() if r.required & set(CONTEXT)]
    if needy and dist.rank() == 0:
        print(f"warning: eval: reward {', '.join(map(repr, needy))} reads the conversation, which eval's greedy "
              "answers do not carry: eval/success and eval/reward are not logged")
    return not needy


def scored_rows(scorer: Scorer, env, examples: list, answers: list, own_reward: bool = True) -> list[dict]:
    """One row per answer: success (reward.success > 0), reward (the weighted terms; None when a term could not
    score it) unless not `own_reward`, its env's measures (`eval_metrics()` of the part that made it: metric
    name -> reward whose raw value is averaged; an answer it cannot score counts 0) and its length. Every
    reward runs isolated, once per answer (scorer.py)."""
    answer_rows = [Row(c.text, e) for e, c in zip(examples, answers)]
    scores = scorer.score_rows(answer_rows, [len(c.token_ids) for c in answers]) if own_reward else None
    measures = [env.owner(e).eval_metrics() for e in examples]
    values: dict[str, dict[int, float | None]] = {}
    for name in dict.fromkeys(n for m in measures for n in m.values()):
        idx = [i for i, m in enumerate(measures) if name in m.values()]
        if scores is not None and name in scorer.rewards:  # a term or the success reward: already computed
            values[name] = {i: scores[i].parts[name] for i in idx}
        else:
            values[name] = dict(zip(idx, scorer.values(name, [answer_rows[i] for i in idx])))
    rows = []
    for i, (example, c) in enumerate(zip(examples, answers)):
        row = {"id": example.id, "question": example.question, "answer": example.answer, "completion": c.text,
               "tokens": len(c.token_ids)}  # per-problem length: scripts/learning_report.py splits it by operator
        if scores is not None:
            row |= {"success": scores[i].success, "reward": scores[i].reward}
        for key, name in measures[i].items():
            row[key] = values[name][i] or 0.0  # math_verify's None (unparseable gold) counts as not solved
        rows.append(row)
    return rows


def held_out_examples(env, size: int) -> list:
    """The first `size` held-out problems (0: all) of each part of a composed env: one cut of the combined
    list would fill `eval.size` from the first part alone and report 0.0 for the others."""
    return [e for part in env.parts for e in part.eval_examples()[: size or None]]


def summarise(rows: list[dict], n: int, prefix: str, measures: dict[str, str], own_reward: bool = True
              ) -> dict[str, float]:
    """Means over `n` problems (held out on every rank) of the rows every rank answered (disjoint shares);
    eval/reward is the mean over the answers every term could score (0.0 when none could)."""
    n = max(n, 1)
    metrics = {}
    if own_reward:  # the same on every rank (the run's rewards): each sum below is a collective
        metrics[f"{prefix}success"] = dist.sum_over_ranks(sum(r["success"] for r in rows)) / n
        scored = [r["reward"] for r in rows if r["reward"] is not None]
        metrics[f"{prefix}reward"] = dist.sum_over_ranks(sum(scored)) / max(dist.sum_over_ranks(len(scored)), 1)
    metrics |= {f"{prefix}{k}": dist.sum_over_ranks(sum(r[k] for r in rows)) / n for k in measures}
    metrics[f"{prefix}len"] = dist.sum_over_ranks(sum(r["tokens"] for r in rows)) / n
    return metrics


def pass_at_n(engine, prompts, examples, cfg: Config, scorer: Scorer | None = None) -> int:
    """How many problems have at least one of eval.n samples correct under the success reward (a sample
    it cannot score is not correct; `scorer` counts those, else a Scorer of cfg.reward is made for the call)."""
    sampled = engine.generate(prompts, Sampling(n=cfg.eval.n, temperature=cfg.eval.temperature,
                                                max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed))
    own = scorer is None
    scorer = Scorer(cfg.reward, cfg.eval.max_new_tokens) if own else scorer
    values = scorer.values(cfg.reward.success, [Row(c.text, e) for e, cs in zip(examples, sampled) for c in cs])
    ends = [sum(len(cs) for cs in sampled[:i + 1]) for i in range(len(sampled))]
    solved = sum(any((v or 0) > 0 for v in values[end - len(cs):end]) for cs, end in zip(sampled, ends))
    if own:
        scorer.close()
    return solved


def reward_failures(scorer: Scorer, names: list[str]) -> dict[str, float]:
    """`eval/reward/failed/<name>`: answers a reward could not score, over every rank; rank 0 says why."""
    counts = scorer.step_metrics()
    metrics = {f"eval/reward/failed/{n}": dist.sum_over_ranks(counts.get(f"reward/failed/{n}", 0.0))
               for n in dict.fromkeys(names)}  # the same keys on every rank: each is a collective
    reasons = scorer.errors_over_ranks({k.removeprefix("eval/"): v for k, v in metrics.items()})
    for key, count in metrics.items():
        name = key.rsplit("/", 1)[-1]
        if count and dist.rank() == 0:
            why = reasons.get(name, "see logs/rank<r>.log")
            print(f"warning: eval: reward {name!r} could not score {count:g} answers ({why}); they count as not solved")
    return metrics


def evaluate_main(cfg: Config) -> dict[str, float]:
    """`rltool eval actors.path=outputs/<run>/final`: load the model into vLLM and evaluate it."""
    from rltool.actors.actor import close_all, serving_actors
    from rltool.actors.embedded import resolve_model_path
    from rltool.envs import make_env
    from rltool.hardware import resolve_hardware

    hw = resolve_hardware(cfg.hardware)
    path = resolve_model_path(cfg.lead_actor.path)
    actors = serving_actors(cfg, hw)
    env = make_env(cfg.env)
    try:
        metrics, rows = evaluate(actors, env, cfg)
    finally:
        close_all(actors)  # `rltool eval -m` evaluates the next model in this process
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
