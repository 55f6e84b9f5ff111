"""Held-out evaluation of AGRL: does the learned ordering help the model predict what it reads?

On `eval.size` held-out articles (the same pairs at every eval: each article's subset is seeded by
its id), the mean value log-prob per token, under the current policy, of three orderings:
  learned        the policy's greedy queries, selection greedy (or sampled with the run's seed)
  random         the mean over `eval_random_orders` random permutations of the pairs (seeded by the
                 article's id). Uniform selection over the remaining keys at every step gives
                 exactly this distribution, so a "uniform selection" reference is this one.
  article_order  the pairs as the article states them (roots first, for generated articles)
`learned_minus_random` is their paired difference, with its standard error over articles: the
claim "the model learns to order its reading" needs it above 2 standard errors.
"""
from __future__ import annotations

import math
import random

import torch

from rltool import dist
from rltool.agrl.embed import make_vectors
from rltool.agrl.episodes import Episode, pair_text, play_episodes
from rltool.agrl.scoring import OrderingScorer
from rltool.engines.engine import Sampling


def evaluate_orderings(actors: dict, env, cfg) -> tuple[dict[str, float], list[dict]]:
    actor = actors[cfg.lead_actor.name]
    a, tokenizer = cfg.algo.agrl, actor.tokenizer
    model = actor.model if actor.model is not None else scoring_model(actor, cfg)  # `rltool eval`: engine only
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    rngs, episodes = [], []
    for example in env.eval_examples()[: cfg.eval.size or None]:
        rng = random.Random(f"agrl-eval-{example.id}")
        pairs = env.pairs(example, encode, rng)
        if pairs is not None:
            episodes.append(Episode(example, pairs))
            rngs.append(rng)
    world = dist.world_size()
    n = len(episodes) // world * world  # equal shares: ZeRO-3 forwards are collective
    episodes, rngs = episodes[dist.rank():n:world], rngs[dist.rank():n:world]
    generator = torch.Generator().manual_seed(cfg.seed) if a.eval_select == "sampled" else None
    play_episodes(episodes, engine=actor.engine, tokenizer=tokenizer, env=env,
                  vectors=make_vectors(a.embedding, model, a.layer),
                  sampling=Sampling(greedy=True, max_new_tokens=cfg.rollout.max_new_tokens),
                  temperature=a.temperature, greedy=a.eval_select == "greedy", generator=generator,
                  max_prompt_len=cfg.rollout.max_prompt_len)
    scorer = OrderingScorer(tokenizer, cfg.trainer.micro_batch_size)
    learned = scorer(model, [e.ordered for e in episodes]).mean(-1)  # (E,)
    R = a.eval_random_orders
    orders = [r.sample(e.pairs, len(e.pairs)) for e, r in zip(episodes, rngs) for _ in range(R)]
    each_random = scorer(model, orders).mean(-1).view(len(episodes), R)  # (E, R)
    shuffled = each_random.mean(-1)  # (E,)
    in_order = scorer(model, [e.pairs for e in episodes]).mean(-1)  # (E,)
    diff = learned - shuffled  # (E,)
    root = [float(env.is_root(e.example, e.ordered[0])) for e in episodes]
    total = lambda xs: dist.sum_over_ranks(float(sum(xs)))  # noqa: E731
    count = max(n, 1)
    mean_diff = total(diff.tolist()) / count
    var = (total((diff ** 2).tolist()) - count * mean_diff ** 2) / max(count - 1, 1)
    metrics = {
        "eval/agrl/value_logp_learned": total(learned.tolist()) / count,
        "eval/agrl/value_logp_random": total(shuffled.tolist()) / count,
        "eval/agrl/value_logp_article_order": total(in_order.tolist()) / count,
        "eval/agrl/learned_minus_random": mean_diff,
        "eval/agrl/learned_minus_random_se": math.sqrt(max(var, 0.0) / count),
        "eval/agrl/first_pick_root": total(root) / count,
        "eval/agrl/selection_entropy": total(h for e in episodes for h in e.entropy)
        / max(dist.sum_over_ranks(float(sum(len(e.entropy) for e in episodes))), 1),
        "eval/agrl/query_len": total(len(q.token_ids) for e in episodes for q in e.queries)
        / max(dist.sum_over_ranks(float(sum(len(e.queries) for e in episodes))), 1),
        "eval/agrl/articles": float(n),
    }
    rows = [{"id": e.example.id, "title": e.example.question, "queries": [q.text for q in e.queries],
             "read": [pair_text(tokenizer, p) for p in e.ordered], "first_pick_root": r,
             "value_logp": {"learned": float(x), "random": float(y), "article_order": float(z),
                            "random_each": ys.tolist()}}
            for e, r, x, y, z, ys in zip(episodes, root, learned, shuffled, in_order, each_random)]
    return metrics, rows


def scoring_model(actor, cfg):
    """The evaluated weights as a HF model (`rltool eval` starts engines only)."""
    from rltool.actors.load import load_model
    from rltool.hardware import resolve_hardware

    hw = resolve_hardware(cfg.hardware)
    return load_model(actor.base_dir, hw.dtype, trainable=False, device=hw.device)
