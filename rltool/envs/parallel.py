"""Parallel drafts + combiner: K drafts of each problem, then one actor reads them all and answers.

`env=parallel_gsm8k` (K=3): the `env.drafter` actor writes `env.drafts` drafts per attempt, the
`env.combiner` actor sees the problem and every draft and writes the answer. With the default single
actor `policy` both roles are the same model (parallel thinking with self-aggregation); with
`actors=drafter_combiner env.drafter=drafter env.combiner=combiner` they are two models.

Rewards: the combiner's answer and each draft are scored with the run's reward (DAPO's overlong
penalty and mask included). A draft gets its own score plus `env.draft_share` x its attempt's
combiner reward (credit for helping the final answer); a draft or answer the reward could not score
leaves the draft unscored. A draft without a '####' final answer gets `env.draft_format_reward`
added; it is still kept, trained on and shown to the combiner (Actors silently dropped drafts
missing `</think>`).
Groups: per problem, the G x K drafts are one group and the G combiner answers another, so each role
is compared with itself even when one model plays both.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from rltool.config import ConfigError, check
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.task_based import OnTask, TaskConfig
from rltool.rewards.registry import REWARDS, call_reward
from rltool.engines.engine import Sampling
from rltool.engines.prompts import PromptTooLong, encode_chat
from rltool.records import Completion, Sample

COMBINE = ("Here are {k} draft solutions to the problem above, possibly wrong:\n\n{drafts}\n\n"
           "Check them and write the correct solution. Put the final answer after '####'.")


@dataclass
class ParallelConfig(TaskConfig):
    """The keys of drafts + combiner."""

    drafter: str = "policy"
    """The actor that writes the drafts."""
    combiner: str = "policy"
    """The actor that reads the drafts and writes the answer."""
    drafts: int = 3
    """Drafts per attempt (K)."""
    draft_share: float = 0.5
    """A draft's reward is its own reward + draft_share x the combiner's."""
    draft_format_reward: float = 0.0
    """Added to the reward of a draft without a '####' final answer (kept, never dropped)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.drafts >= 1, "env.drafts", self.drafts, "must be >= 1")
        check(0 <= self.draft_share <= 1, "env.draft_share", self.draft_share, "must be in [0, 1]")


class ParallelEnv(OnTask):
    """A single-turn task's problems, each answered from K drafts by a combiner (a draft's prompt: the task)."""

    episodes = "multi_actor"
    """Played by its own `play` (rltool validate refuses a rollout that does not drive it)."""

    @classmethod
    def check_actors(cls, cfg: ParallelConfig, actors: list[str]) -> None:
        """Before any model loads: env.drafter and env.combiner are actors."""
        for role in ("drafter", "combiner"):
            if getattr(cfg, role) not in actors:
                raise ConfigError(f"env.{role}={getattr(cfg, role)!r}: not an actor; actors: {', '.join(actors)}")

    def combine_messages(self, example: Example, drafts: list[Completion]) -> list[dict]:
        shown = "\n\n".join(f"Draft {i + 1}:\n{d.text.strip()}" for i, d in enumerate(drafts))
        task = self.task.messages(example)
        return task + [{"role": "user", "content": COMBINE.format(k=len(drafts), drafts=shown)}]

    def roles(self, actors: dict):
        for role in ("drafter", "combiner"):
            name = getattr(self.cfg, role)
            if name not in actors:
                raise ConfigError(f"env.{role}={name!r}: not an actor; actors: {', '.join(actors)}")
        return actors[self.cfg.drafter], actors[self.cfg.combiner]

    def attempts(self, actors: dict, examples: list[Example], n: int, draft_sampling: Sampling,
                 combine_sampling: Sampling, max_prompt_len: int):
        """n attempts per example: (draft prompt, drafts, combiner prompt, answer) each, every phase one engine call."""
        drafter, combiner = self.roles(actors)
        K = self.cfg.drafts
        draft_prompts = [encode_chat(drafter.tokenizer, self.messages(e), max_prompt_len) for e in examples]
        drafts = drafter.engine.generate(draft_prompts, replace(draft_sampling, n=n * K))
        out, combine_prompts = [], []
        for e, prompt, ds in zip(examples, draft_prompts, drafts):
            for a in range(n):
                mine = ds[a * K:(a + 1) * K]
                try:
                    combine_prompts.append(encode_chat(combiner.tokenizer, self.combine_messages(e, mine), max_prompt_len))
                except PromptTooLong as err:
                    raise ConfigError(f"env={self.name}: {err} (the problem and {K} drafts); raise "
                                      "rollout.max_prompt_len or lower env.drafts / rollout.max_new_tokens") from None
                out.append([e, prompt, mine, combine_prompts[-1]])
        answers = combiner.engine.generate(combine_prompts, combine_sampling)
        for attempt, (answer,) in zip(out, answers):
            attempt.append(answer)
        return out

    def play(self, ctx, examples: list[Example], ids) -> list[Sample]:
        from rltool.algos.rollouts import score_completions  # here: rltool.algos imports rltool.envs

        G = ctx.cfg.trainer.group_size
        drafter, combiner = self.roles(ctx.actors)
        attempts = self.attempts(ctx.actors, examples, G, drafter.sampling(), combiner.sampling(),
                                 ctx.cfg.rollout.max_prompt_len)
        draft_groups = {e.id: ids.take() for e in examples}
        answer_groups = {e.id: ids.take() for e in examples}
        # one Scorer call (DAPO's overlong penalty on each completion's own length): every answer, then every draft
        completions = [a[-1] for a in attempts] + [d for a in attempts for d in a[2]]
        rows = [a[0] for a in attempts] + [a[0] for a in attempts for _ in a[2]]
        scores = score_completions(ctx, completions, rows)
        answer_scores, draft_scores = scores[:len(attempts)], iter(scores[len(attempts):])
        masked = lambda c: ctx.cfg.algo.overlong_mask and c.truncated  # noqa: E731  DAPO's overlong mask
        samples = []
        for (e, prompt, drafts, combine_prompt, answer), a in zip(attempts, answer_scores):
            if combiner.trainable:
                samples.append(Sample(prompt_ids=combine_prompt, completion_ids=answer.token_ids, sample_logp=answer.logp,
                                      group=answer_groups[e.id], reward=a.reward, success=a.success, feedback=a.feedback,
                                      text=answer.text, truncated=answer.truncated, example_id=e.id,
                                      loss_weight=0.0 if masked(answer) else 1.0, actor=combiner.name,
                                      info={"reward_parts": a.parts, "role": "combiner"}))
            for d in drafts:
                s = next(draft_scores)
                formatted = (call_reward(REWARDS["format"], d.text, e)[0] or 0) > 0
                if drafter.trainable:
                    samples.append(Sample(prompt_ids=prompt, completion_ids=d.token_ids, sample_logp=d.logp,
                                          group=draft_groups[e.id], reward=self.draft_reward(s.reward, formatted, a.reward),
                                          success=s.success, text=d.text, truncated=d.truncated, example_id=e.id,
                                          loss_weight=0.0 if masked(d) else 1.0, actor=drafter.name,
                                          first_attempt=drafter.name != combiner.name,  # reward/mean: the answers
                                          info={"role": "draft", "formatted": formatted,
                                                "reward_parts": s.parts}))
        return samples

    def draft_reward(self, own: float | None, formatted: bool, team: float | None) -> float | None:
        """The run's reward of the draft, env.draft_format_reward added when it has no '####' final answer, plus
        env.draft_share x its attempt's answer reward. Unscored (None) when the draft or, with a share, the
        answer could not be scored: an unknown team reward is not a 0."""
        if own is None or (team is None and self.cfg.draft_share):
            return None
        return own + (0.0 if formatted else self.cfg.draft_format_reward) + self.cfg.draft_share * (team or 0.0)

    def answers(self, actors: dict, examples: list[Example], cfg) -> list[Completion]:
        """Eval: K drafts sampled with a fixed seed (greedy drafts would all be the same), a greedy answer."""
        drafts = Sampling(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                          max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)
        answer = Sampling(greedy=True, max_new_tokens=cfg.eval.max_new_tokens)
        return [a[-1] for a in self.attempts(actors, examples, 1, drafts, answer, cfg.rollout.max_prompt_len)]


@register_env("parallel", config=ParallelConfig)
class Parallel(ParallelEnv):
    """Any single-turn task with drafts + combiner: env=parallel env.task=<task>."""

    name = "parallel"


@register_env("parallel_gsm8k", config=ParallelConfig)
class ParallelGSM8K(ParallelEnv):
    name = "parallel_gsm8k"
    TASK = "gsm8k"
