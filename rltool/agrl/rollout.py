"""AGRL's rollout (algo=agrl, env=article_curriculum): the policy orders its own reading.

Per step: `prompts_per_step` articles, `group_size` episodes each over the same pairs (so within a
group only the ordering differs). Each episode: the policy writes a query per step (vLLM, batched
over episodes), the selector picks a remaining pair by attention (rltool/agrl/episodes.py). Then
  R    = mean over steps of the mean log-prob of the values, under the policy, in the order read
  R_b  = the same on a random ordering of the same pairs (agrl.baseline=random_order, default), the
         mean R of the article's other orderings this step (group, RLOO), or the frozen base model on
         the same ordering (frozen_base)
  rel  = R - R_b;  the trajectory filter keeps episodes whose rel beats the running statistics
and every query of a kept episode becomes a Sample with the preset advantage rel - b (b: the
running mean of earlier batches, or 0). The loop then trains it like any other: on one pass the
clipped surrogate's gradient is REINFORCE's, and with agg=dr_grpo the step loss is
  1/(S * q) * { mean_e [ -(rel_e - b) sum_s sum_t log pi(q_e,s,t) ] + beta * mean_e sum_s,t KL_k3 }
(S query steps per episode, q = rollout.max_new_tokens): the method's loss up to that constant.
With agrl.learn_selection the selector trains too: each row adds -(rel - b) * log p(its pick),
recomputed with gradient through the policy's own query/key vectors (`selection_loss`).
Why random_order by default: the base model on the same ordering reads the same pairs in the same
order, so its subtraction cancels the ordering's own effect and leaves the policy's weight drift.
Randomness (pair subsets, random orderings, sampled selection) is seeded by (seed, step, rank), so
a resumed run draws what the uninterrupted one did; the filter's statistics are the only state.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import torch

from rltool import dist
from rltool.agrl.embed import HiddenVectors, make_vectors
from rltool.agrl.episodes import Episode, play_episodes
from rltool.agrl.filter import RunningStats, TrajectoryFilter
from rltool.agrl.scoring import OrderingScorer
from rltool.agrl.selection import attention_scores
from rltool.algos.advantages import ADVANTAGES
from rltool.algos.losses import EXTRA_LOSSES, agg_loss
from rltool.algos.rollouts import GroupIds, Rollout, RolloutContext, register_rollout
from rltool.config import check, check_choice
from rltool.records import Sample

register_extra_loss = EXTRA_LOSSES.register


@dataclass
class AgrlConfig:
    """Attention-guided curriculum RL knobs (algo=agrl), `algo.agrl.*`; read only when algo.rollout=agrl.
    The query budget q is rollout.max_new_tokens; the KL weight beta is algo.kl_coef."""

    baseline: str = "random_order"
    """What the chosen ordering's value log-prob is compared with: random_order (the policy on a random
    ordering of the same pairs) | group (the mean over the article's other orderings this step, RLOO) |
    frozen_base (the frozen base model on the same ordering)."""
    embedding: str = "minilm"
    """Query/key vectors: minilm (the embedded all-MiniLM-L6-v2) | hidden (the policy's own hidden states,
    mean-pooled at `layer`, through that layer's attention q/k projections, GQA-aware)."""
    layer: int = -1
    """embedding=hidden: the decoder layer (0-based; -1 = the middle layer)."""
    select_temperature: Optional[float] = None
    """Softmax temperature over the scaled scores; null: 0.01 for minilm (its scores differ by ~0.01 between
    a family article's keys; a query restating one fact scores its key ~0.02 above the others, so it picks
    that key ~6 times in 10 of 6), 1.0 for hidden (~2.5 between keys on SmolLM2-135M's middle layer).
    A run at 0.005 (~9 in 10) learned no better order in 40 steps (docs/agrl.md, evidence)."""
    eval_select: str = "greedy"
    """Held-out selection: greedy | sampled (with the run's seed)."""
    eval_random_orders: int = 4
    """Random orderings scored per held-out article; their mean is the article's `random` value (one
    permutation's luck is most of the paired difference's variance)."""
    filter: str = "std"
    """Trajectory filter: std (reward > running mean + filter_k * std) | percentile (top filter_top_percent of
    the batch) | none."""
    filter_k: float = 0.0
    filter_top_percent: float = 25.0
    warmup: int = 0
    """Episodes seen before the filter drops any."""
    learn_selection: bool = False
    """Also train the selector: add -(R - b) * log p(chosen key) to the loss, through the policy's own
    query/key vectors (needs embedding=hidden; MiniLM is frozen, so it would have no gradient)."""
    advantage_baseline: str = "running_mean"
    """b in -(R - b): running_mean (the filter's mean over earlier batches) | none (b = 0)."""

    @property
    def temperature(self) -> float:
        """The selection temperature in use: select_temperature, or the embedding's default."""
        if self.select_temperature is not None:
            return self.select_temperature
        return 0.01 if self.embedding == "minilm" else 1.0

    def __post_init__(self) -> None:
        check_choice("algo.agrl.baseline", self.baseline, ["random_order", "group", "frozen_base"])
        check_choice("algo.agrl.embedding", self.embedding, ["minilm", "hidden"])
        check_choice("algo.agrl.eval_select", self.eval_select, ["greedy", "sampled"])
        check_choice("algo.agrl.filter", self.filter, ["std", "percentile", "none"])
        check_choice("algo.agrl.advantage_baseline", self.advantage_baseline, ["running_mean", "none"])
        check(self.select_temperature is None or self.select_temperature > 0, "algo.agrl.select_temperature",
              self.select_temperature, "must be > 0 (or null: by embedding)")
        check(0 < self.filter_top_percent <= 100, "algo.agrl.filter_top_percent", self.filter_top_percent,
              "must be in (0, 100]")
        check(self.warmup >= 0, "algo.agrl.warmup", self.warmup, "must be >= 0")
        check(self.eval_random_orders >= 1, "algo.agrl.eval_random_orders", self.eval_random_orders, "must be >= 1")
        check(not self.learn_selection or self.embedding == "hidden", "algo.agrl.learn_selection", True,
              "needs algo.agrl.embedding=hidden (MiniLM is frozen: the pick's log-prob has no gradient to the policy)")


@register_rollout("agrl", config=AgrlConfig)
class AgrlRollout(Rollout):
    REWARD = "mean log-prob of the values read, in the order chosen, minus algo.agrl.baseline's (the reward group is unused)"
    plays = ("article",)
    """Only article episodes (env=article_curriculum): its queries select key/value pairs, they answer nothing."""

    @classmethod
    def check(cls, config) -> None:
        check(not (config.algo.agrl.embedding == "hidden" and config.hardware.zero_stage == 3), "algo.agrl.embedding",
              "hidden", "not under ZeRO-3 (the q/k projections are sharded); use minilm")

    def __init__(self, ctx: RolloutContext):
        a = ctx.cfg.algo.agrl
        self.ctx, self.a = ctx, a
        self.actor = ctx.actors[ctx.policy]
        self.tokenizer = self.actor.tokenizer
        self.vectors = make_vectors(a.embedding, self.actor.model, a.layer)
        self.scorer = OrderingScorer(self.tokenizer, ctx.cfg.trainer.micro_batch_size)
        self.filter = TrajectoryFilter(a.filter, a.filter_k, a.filter_top_percent, a.warmup)
        self.base = base_model(self.actor, ctx.cfg) if a.baseline == "frozen_base" else None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def __call__(self, step: int) -> tuple[list[Sample], dict[str, float]]:
        ctx, cfg = self.ctx, self.ctx.cfg
        rng = random.Random(f"agrl-{cfg.seed}-{step}-{ctx.rank}")
        generator = torch.Generator().manual_seed(rng.getrandbits(62))
        episodes, groups, ids = [], [], GroupIds(ctx.rank)
        examples = ctx.draw(cfg.trainer.prompts_per_step // cfg.hardware.num_processes)
        too_short = 0
        for example in examples:
            pairs = ctx.env.pairs(example, self.encode, rng)
            if pairs is None:
                too_short += 1
                continue
            group = ids.take()
            for _ in range(cfg.trainer.group_size):
                episodes.append(Episode(example, pairs))
                groups.append(group)
        if not episodes:
            raise RuntimeError(f"step {step + 1}: none of {len(examples)} articles has env.pairs_per_episode="
                               f"{cfg.env.pairs_per_episode} pairs; lower it or raise env.min_article_tokens")
        play_episodes(episodes, engine=self.actor.engine, tokenizer=self.tokenizer, env=ctx.env, vectors=self.vectors,
                      sampling=ctx.sampling(1), temperature=self.a.temperature, greedy=False,
                      generator=generator, max_prompt_len=cfg.rollout.max_prompt_len)
        per_step = self.scorer(self.actor.model, [e.ordered for e in episodes])  # (E, T)
        reward = per_step.mean(-1)  # (E,)
        if self.a.baseline == "group":  # the article's other orderings (RLOO): no extra forward
            baseline = reward - ADVANTAGES["rloo"](reward, torch.tensor(groups), torch.ones_like(reward, dtype=torch.bool))
        elif self.a.baseline == "frozen_base":
            baseline = self.scorer(self.base, [e.ordered for e in episodes]).mean(-1)  # (E,)
        else:
            shuffled = [rng.sample(e.pairs, len(e.pairs)) for e in episodes]
            baseline = self.scorer(self.actor.model, shuffled).mean(-1)  # (E,)
        rel = reward - baseline  # (E,)

        b = self.filter.stats.mean if self.a.advantage_baseline == "running_mean" else 0.0  # earlier batches only
        everyone, offset = dist.gather_cat(rel)  # every rank filters the same global batch
        keep, metrics = self.filter.step(everyone)
        keep = keep[offset:offset + len(episodes)].tolist()
        samples = [Sample(prompt_ids=prompt, completion_ids=q.token_ids, sample_logp=q.logp, group=g,
                          reward=float(r), success=float(r > 0), text=q.text, truncated=q.truncated,
                          example_id=e.example.id, actor=ctx.policy, adv=float(r) - b, kind="query",
                          **(selection_inputs(e, s) if self.a.learn_selection else {}))
                   for e, g, r, k in zip(episodes, groups, rel.tolist(), keep) if k
                   for s, (prompt, q) in enumerate(zip(e.prompts, e.queries))]
        queries = [q for e in episodes for q in e.queries]
        metrics |= {
            "agrl/reward": reward.mean(), "agrl/baseline_reward": baseline.mean(), "agrl/reward_vs_baseline": rel.mean(),
            "agrl/selection_entropy": sum(h for e in episodes for h in e.entropy) / max(len(queries), 1),
            "agrl/first_pick_root": sum(ctx.env.is_root(e.example, e.ordered[0]) for e in episodes) / len(episodes),
            "agrl/query_len": sum(len(q.token_ids) for q in queries) / max(len(queries), 1),
            "agrl/articles_too_short": float(too_short), "rollout/groups": float(len(set(groups))),
            "agrl/advantage_baseline": b,
        } | {f"agrl/value_logp_t{t + 1}": per_step[:, t].mean() for t in range(per_step.shape[1])}
        return samples, {k: float(v) for k, v in metrics.items()}

    def state_dict(self) -> dict:
        s = self.filter.stats
        return {"filter": {"count": s.count, "mean": s.mean, "m2": s.m2}}

    def load_state_dict(self, state: dict) -> None:
        self.filter.stats = RunningStats(**state["filter"])


def selection_inputs(e: Episode, s: int) -> dict:
    """What `selection_loss` needs to recompute the pick of query step s: every key's tokens, the keys
    already read before it, and the one it chose."""
    K, width = len(e.pairs), max(len(p.key) for p in e.pairs)
    keys = torch.zeros(K, width, dtype=torch.long)  # (K, Lk)
    key_mask = torch.zeros(K, width, dtype=torch.long)  # (K, Lk)
    for i, p in enumerate(e.pairs):
        keys[i, : len(p.key)] = torch.tensor(p.key)
        key_mask[i, : len(p.key)] = 1
    used = torch.zeros(K, dtype=torch.bool)  # (K,)
    used[e.order[:s]] = True
    return {"extra_loss": "agrl_selection", "extra": {"select_keys": keys, "select_key_mask": key_mask,
                                                      "select_used": used, "select_index": torch.tensor(e.order[s])}}


@register_extra_loss("agrl_selection")
def selection_loss(model, mb, cfg, counts) -> tuple[torch.Tensor, dict]:
    """-(R - b) * log p(chosen key | query, remaining keys), aggregated like the policy term (one "token"
    per row). The query's and keys' vectors are recomputed with gradient from the policy's hidden states,
    exactly as the rollout computed them to sample the pick (one update pass: the same weights)."""
    a = cfg.algo.agrl
    vectors = HiddenVectors(model, a.layer)
    P = mb.prompt_width
    q = vectors.project_queries(vectors.pooled(mb.input_ids[:, P:], mb.attention_mask[:, P:]))  # (b, d)
    keys, key_mask = mb.extra["select_keys"], mb.extra["select_key_mask"]  # (b, K, Lk)
    b, K, Lk = keys.shape
    k = vectors.project_keys(vectors.pooled(keys.view(b * K, Lk), key_mask.view(b * K, Lk))).view(b, K, -1)  # (b, K, d)
    logits = (attention_scores(q, k) / a.temperature).masked_fill(mb.extra["select_used"], float("-inf"))
    select_logp = torch.log_softmax(logits, -1).gather(-1, mb.extra["select_index"][:, None])  # (b, 1)
    row = mb.rl_mask.any(-1, keepdim=True).to(select_logp.dtype)  # (b, 1): rows the policy term trains
    adv = (mb.adv * mb.rl_mask).sum(-1, keepdim=True) / mb.rl_mask.sum(-1, keepdim=True).clamp(min=1)  # (b, 1)
    loss = agg_loss(-adv * select_logp, row, cfg.algo.agg, counts)
    return loss, {"loss/select": loss.detach(), "policy/select_logp": select_logp.detach().mean()}


def base_model(actor, cfg):
    """The frozen base model: the KL reference when there is one; else, under LoRA, the policy with its
    adapter off (no second copy); else the base weights loaded once more."""
    from rltool import train_backend
    from rltool.actors.lora import AdapterDisabled, is_peft

    if actor.ref_model is not None:
        return actor.ref_model
    policy = train_backend.unwrap(actor.model)
    if is_peft(policy):
        return AdapterDisabled(policy)
    from rltool.actors.load import load_model
    from rltool.hardware import resolve_hardware

    hw = resolve_hardware(cfg.hardware)
    return load_model(actor.base_dir, hw.dtype, trainable=False, device=hw.device)
