"""Rollout functions: how an algorithm turns prompts into scored Samples.

An algorithm may own its rollout phase (ERL generates reflections and retries), so the loop only
calls `ROLLOUTS[cfg.algo.rollout](ctx)` once at setup and then `rollout(step)` each step. A
rollout (a `Rollout` subclass) draws its own prompts through `ctx.draw` (DAPO's dynamic sampling
draws more to refill), keeps whatever cross-step state it needs (ERL memory) behind `state_dict`,
and returns Samples with rewards; advantages are computed by the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rltool.algos.dapo import informative_groups, overlong_penalty
from rltool.config import Config
from rltool.envs.base import Env, Example
from rltool.registry import Registry
from rltool.rewards.score import Scorer
from rltool.engines.engine import Engine, Sampling
from rltool.engines.prompts import encode_chat
from rltool.records import Completion, Sample

ROLLOUTS: Registry[type["Rollout"]] = Registry("rollout", home=("rltool.algos", "rltool.agrl"))
register_rollout = ROLLOUTS.register


@dataclass
class RolloutContext:
    cfg: Config
    engine: Engine
    tokenizer: Any
    env: Env
    scorer: Scorer
    draw: Callable[[int], list[Example]]
    """draw(k) -> the next k training prompts of this rank (the sampler keeps the position)."""
    rank: int = 0
    actors: dict = field(default_factory=dict)
    """name -> rltool.actors.actor.Actor (engine, tokenizer, sampling()): what multi-actor environments drive.
    `engine` and `tokenizer` above are the policy's (the first trainable actor)."""

    @property
    def policy(self) -> str:
        """The name single-policy rollouts label their samples with."""
        return next((n for n, a in self.actors.items() if a.trainable), "policy")

    def sampling(self, n: int, max_new_tokens: int | None = None) -> Sampling:
        r = self.cfg.rollout
        return Sampling(n=n, temperature=r.temperature, top_p=r.top_p,
                        max_new_tokens=max_new_tokens or r.max_new_tokens)

    def encode(self, messages: list[dict]) -> list[int]:
        return encode_chat(self.tokenizer, messages, self.cfg.rollout.max_prompt_len)


class GroupIds:
    """Group ids unique across ranks and refill rounds within one step."""

    def __init__(self, rank: int):
        self.next = rank * 1_000_000

    def take(self) -> int:
        self.next += 1
        return self.next - 1


@dataclass
class Scored:
    """One completion's shaped reward (DAPO's soft overlong penalty included), success, feedback text
    and every reward's raw value (`reward/<name>` in the metrics)."""

    reward: float | None
    success: float
    feedback: str
    parts: dict


def score_completions(ctx: RolloutContext, completions: list[Completion], examples: list[Example],
                      **context) -> list[Scored]:
    """All of a step's completions in one Scorer call: batched rewards (TRL-style, judges) see them at once.
    context: conversations=, actors= (multi-actor environments), aligned with `completions`."""
    a = ctx.cfg.algo
    scores = ctx.scorer.score_batch([c.text for c in completions], examples, [len(c.token_ids) for c in completions],
                                    **context)
    penalties = overlong_penalty(torch.tensor([len(c.token_ids) for c in completions], dtype=torch.long),
                                 ctx.cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_penalty).tolist()
    return [Scored(None if s.reward is None else s.reward + p, s.success, s.feedback, s.parts)
            for s, p in zip(scores, penalties)]


def sample_groups(ctx: RolloutContext, examples: list[Example], ids: GroupIds, *, kind: str = "attempt",
                  n: int | None = None, prompts: list[list[int]] | None = None) -> list[Sample]:
    """G completions per example, scored against the example; one group per example."""
    n = n or ctx.cfg.trainer.group_size
    prompts = prompts or [ctx.encode(ctx.env.messages(e)) for e in examples]
    outputs = ctx.engine.generate(prompts, ctx.sampling(n))
    groups = [ids.take() for _ in examples]  # one id per example, in order (ERL maps them back to examples)
    flat = [(group, example, prompt, c) for group, example, prompt, completions
            in zip(groups, examples, prompts, outputs) for c in completions]
    scored = score_completions(ctx, [c for *_, c in flat], [e for _, e, _, _ in flat])
    samples = []
    for (group, example, prompt, c), s in zip(flat, scored):
        overlong = ctx.cfg.algo.overlong_mask and c.truncated
        samples.append(Sample(prompt_ids=prompt, completion_ids=c.token_ids, sample_logp=c.logp,
                              group=group, reward=s.reward, success=s.success, feedback=s.feedback,
                              text=c.text, truncated=c.truncated, kind=kind, example_id=example.id, actor=ctx.policy,
                              loss_weight=0.0 if overlong else 1.0, info={"reward_parts": s.parts}))
    return samples


def keep_informative(samples: list[Sample], metric: str = "success") -> list[Sample]:
    """DAPO dynamic sampling: drop groups whose `metric` is the same for every scored member.

    "success" (DAPO, verl: accuracy) is the default: filtering on the shaped reward would keep an
    all-wrong group whose members differ only by the overlong penalty, and train on length alone.
    """
    if not samples:
        return samples
    values = [s.success if metric == "success" else s.reward for s in samples]
    rewards = torch.tensor([v if s.reward is not None else 0.0 for s, v in zip(samples, values)], dtype=torch.float)
    valid = torch.tensor([s.reward is not None for s in samples])
    keep = informative_groups(rewards, torch.tensor([s.group for s in samples]), valid)
    return [s for s, k in zip(samples, keep.tolist()) if k]


class Rollout:
    """Base class of a registered rollout: built once at setup as `cls(ctx)`, then called each step as
    `rollout(step) -> (samples, metrics)`. What else the loop, rltool validate and the model card ask of it
    is declared here with its default."""

    plays: tuple[str, ...] = ("single_turn",)
    """The kinds of env episode (an env's `episodes`) it drives; rltool validate (cli.check_env_actors)
    refuses an env of another kind before any model loads."""
    REWARD: str | None = None
    """What it rewards, for the model card, when it scores episodes itself instead of with the reward group
    (AGRL's value log-probs). None: the card lists the reward group's terms."""

    def __init__(self, ctx: RolloutContext):
        self.ctx = ctx

    @classmethod
    def max_new_tokens(cls, cfg: Config) -> int:
        """The most new tokens it asks of an engine in one generation (the engine's context is sized for it).
        Default: rollout.max_new_tokens; ERL's reflections have their own budget."""
        return cfg.rollout.max_new_tokens

    @classmethod
    def check(cls, config: Config) -> None:
        """Rules between its own keys and the rest of the config, raising ConfigError before any model loads
        (AGRL: its hidden-state embedding cannot run on ZeRO-3 shards). Default: none."""

    def __call__(self, step: int) -> tuple[list[Sample], dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Cross-step state the checkpoint keeps (ERL's memory, AGRL's filter statistics). Default: none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s state on resume."""


@register_rollout("grpo")
class GroupRollout(Rollout):
    """GRPO-family rollout: `prompts_per_step` prompts x `group_size` samples each, each env's `play` (the
    single-turn default, or a multi-actor env's own).

    With `algo.dynamic_sampling`, zero-variance groups are dropped and up to `max_refill_rounds`
    extra rounds of fresh prompts refill the batch; if still short, the step trains on fewer groups
    (logged as rollout/groups) rather than looping forever.
    """

    plays = ("single_turn", "multi_actor")

    def __call__(self, step: int) -> tuple[list[Sample], dict[str, float]]:
        ctx, want = self.ctx, self.ctx.cfg.trainer.prompts_per_step // self.ctx.cfg.hardware.num_processes
        ids = GroupIds(ctx.rank)
        samples = ctx.env.play(ctx, ctx.draw(want), ids)
        metrics = {"rollout/reward_all": _mean([s.reward for s in samples])}
        if ctx.cfg.algo.dynamic_sampling:
            metric = ctx.cfg.algo.dynamic_sampling_metric
            first_round, samples = samples, keep_informative(samples, metric)
            for _ in range(ctx.cfg.algo.max_refill_rounds):
                missing = want - len({s.group for s in samples})
                if missing <= 0:
                    break
                samples += keep_informative(ctx.env.play(ctx, ctx.draw(missing), ids), metric)
            kept = set(sorted({s.group for s in samples})[:want])
            # Nothing informative at all: train on the first round, whose advantages are all 0.
            samples = [s for s in samples if s.group in kept] or first_round
        metrics["rollout/groups"] = float(len({s.group for s in samples}))
        return samples, metrics


def _mean(xs: list[float | None]) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else 0.0
