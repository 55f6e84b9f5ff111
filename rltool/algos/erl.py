"""Experiential RL (ERL): attempt, reflect on failures, retry, remember what worked, internalise.

Per step, on each rank (knobs in `algo.erl`, see ErlConfig):
  1. First attempt: G samples y1 per prompt, reward r1 and feedback text f1 (kind="attempt").
  2. Gate: attempts with r1 < gate_threshold are reflected on. r1=None (could not score) is NOT
     gated: there is nothing reliable to reflect on, and its r2 could not be compared anyway.
  3. Reflect: one batched generate for all gated attempts. The model sees the question, y1, f1,
     r1 and up to memory_top_k retrieved reflections, and writes a plan Δ (kind="reflection").
     The prompt is built within rollout.max_prompt_len: y1 is shortened first (its end kept), then
     the least relevant lessons are dropped; the task itself is never cut (erl/prompt_truncated).
  4. Retry: one batched generate. The retry prompt holds the question and Δ only, never y1 or f1,
     so y2 must come from the lesson, not from copying. r2 is scored against the original example.
  5. Memory: Δ is stored when r2 > memory_threshold (FIFO, memory_size). Retrieval in step 3 uses
     only earlier steps' entries, by recency or MiniLM prompt similarity. Under several ranks each
     step's new lessons are all-gathered and added in rank order: one memory, identical on every rank.
  6. Samples: reflections and retries are both rewarded with r2.
     variant=packed (seed's Algorithm 1): all reflections of the step form one group and all
       retries another, over every rank; everything trains in one pass (update=0).
     variant=split (paper's Algorithm 2): reflections and retries of one prompt's gated attempts
       form one group per kind, trained in a second pass after y1's (update=1). With 0/1 rewards
       these groups are small and often tied, which gives zero advantage: that is the algorithm.
  7. Internalise: each retry with r2 > distill_threshold also becomes (original prompt -> y2),
     kind="distill", with a preset advantage so the loop's estimator leaves it alone:
       sft:  cross-entropy, sft_weight=internalization_coef, loss_weight=0, adv=0.
       raft: reward-weighted likelihood inside the RL loss, loss_weight=internalization_coef,
             adv=r2 (as in the paper's official code); with ratio 1 the gradient is r2 * ∇logp.
     Distill samples train in the same pass as the retries. Their `sample_logp` is the engine's
     log-prob of y2 under the *retry* prompt, not a behaviour policy for (x -> y2): they are
     `relabelled`, so mismatch correction leaves them at weight 1 and out of its metrics.

enable_reflection=False is the budget-matched GRPO ablation: each gated attempt buys the two
generations reflection + retry would have cost as two fresh first attempts at the same prompt,
added to that prompt's group. Sequence counts match; token counts do not (reflections are short).

Templates are filled with one regex pass, so braces or `{attempt}` inside a question or model
output stay literal text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from rltool import dist
from rltool.algos.memory import Memory
from rltool.algos.rollouts import GroupIds, Rollout, RolloutContext, register_rollout, sample_groups, score_completions
from rltool.config import check, check_choice, check_template
from rltool.envs.base import Example
from rltool.engines.prompts import encode_chat
from rltool.records import Completion, Sample

PLACEHOLDER = re.compile(r"\{(\w+)\}")
PACKED_GROUPS = {"reflection": -1, "retry": -2}
"""variant=packed: one group per kind over the whole step and every rank (GroupIds are >= 0)."""


@dataclass
class ErlConfig:
    """Experiential RL (ERL) knobs, `algo.erl.*`; read only when algo.rollout=erl."""

    variant: str = "packed"
    """packed: y1, reflection, retry in one update (seed's Algorithm 1); split: y1 then reflection+retry."""
    gate_threshold: float = 1.0
    """First attempts with reward < this are reflected on and retried."""
    memory_threshold: float = 0.5
    """A reflection is stored when its retry's reward > this."""
    distill_threshold: float = 0.5
    """Retries with reward > this become (prompt -> retry) internalization pairs."""
    memory_size: int = 50
    """FIFO capacity of the cross-episode reflection memory."""
    memory_top_k: int = 3
    """Reflections retrieved into each reflection prompt."""
    retrieval: str = "recency"
    """recency | similarity (MiniLM embedding of the prompt)."""
    enable_reflection: bool = True
    """Off: plain GRPO with the same generation budget."""
    enable_memory: bool = True
    enable_internalization: bool = True
    internalization: str = "sft"
    """sft: cross-entropy on (prompt -> retry); raft: reward-weighted likelihood inside the RL loss."""
    internalization_coef: float = 1.0
    attempt_weight: float = 1.0
    """Loss weight of first-attempt trajectories."""
    reflection_weight: float = 1.0
    retry_weight: float = 1.0
    reflection_max_new_tokens: int = 128
    reflection_template: str = (
        "A previous attempt at a task failed.\n\nTask:\n{prompt}\n\nAttempt:\n{attempt}\n\n"
        "Feedback: {feedback}\nReward: {reward}\n\nLessons that helped before:\n{memory}\n\n"
        "Write a short plan that fixes the mistake. Do not solve the task."
    )
    retry_template: str = "{prompt}\n\nUse this plan:\n{reflection}"

    def __post_init__(self) -> None:
        check_choice("algo.erl.variant", self.variant, ["packed", "split"])
        check_choice("algo.erl.retrieval", self.retrieval, ["recency", "similarity"])
        check_choice("algo.erl.internalization", self.internalization, ["sft", "raft"])
        check(self.memory_size >= 0, "algo.erl.memory_size", self.memory_size, "must be >= 0")
        check(self.memory_top_k >= 0, "algo.erl.memory_top_k", self.memory_top_k, "must be >= 0")
        check_template("algo.erl.reflection_template", self.reflection_template,
                       required={"prompt", "attempt"}, allowed={"prompt", "attempt", "feedback", "reward", "memory"})
        check_template("algo.erl.retry_template", self.retry_template,
                       required={"prompt", "reflection"}, allowed={"prompt", "reflection"})


def fill(template: str, **values: str) -> str:
    """Replace `{name}` for the given names in a single pass; other text (and braces in values) untouched."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def bullets(reflections: list[str]) -> str:
    return "\n".join(f"- {r}" for r in reflections) if reflections else "(none)"


def is_gated(reward: Optional[float], threshold: float) -> bool:
    return reward is not None and reward < threshold


@dataclass
class Episode:
    """One gated first attempt and what ERL generated for it."""

    attempt: Sample
    example: Example
    question: str
    """The user message as the policy saw it (question + instruction); also the memory key."""
    reflection_prompt: list[int]
    reflection: Completion
    retry_prompt: list[int]
    retry: Completion
    r2: Optional[float]
    success2: float
    feedback2: str


def prompt_parts(ctx: RolloutContext, example: Example) -> tuple[list[dict], str]:
    """The env's system messages for `example` and its user text (question + instruction)."""
    messages = ctx.env.messages(example)
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return [m for m in messages if m["role"] == "system"], question


def encode_turn(ctx: RolloutContext, system: list[dict], user: str) -> list[int]:
    return encode_chat(ctx.tokenizer, system + [{"role": "user", "content": user}])


def within_budget(ctx: RolloutContext, build, cut: str, keep_end: bool, then_drop: list[str] = ()) -> tuple[list[int] | None, bool]:
    """Prompt ids from build(cut_text, kept_items) within rollout.max_prompt_len, and whether anything was cut.

    The task is never cut: first `cut` is shortened (keeping its end when keep_end, else its start),
    then items of `then_drop` go from the last (least relevant) one. None when even that does not fit.
    """
    budget, tok = ctx.cfg.rollout.max_prompt_len, ctx.tokenizer
    items = list(then_drop)
    ids = build(cut, items)
    if len(ids) <= budget:
        return ids, False
    cut_ids = tok.encode(cut, add_special_tokens=False)
    while True:
        keep = max(len(cut_ids) - (len(ids) - budget) - 1, 0) if cut_ids else 0  # re-encoding may shift a token
        cut_ids = (cut_ids[len(cut_ids) - keep:] if keep_end else cut_ids[:keep]) if keep else []
        text = tok.decode(cut_ids) if cut_ids else ""
        text = ("..." + text if keep_end else text + "...") if text else "(omitted: too long)"
        ids = build(text, items)
        if len(ids) <= budget:
            return ids, True
        if not cut_ids and not items:
            return None, True
        if not cut_ids:
            items = items[:-1]


def reflect_and_retry(ctx: RolloutContext, memory: Memory, gated: list[Sample],
                      example_of: dict[int, Example]) -> tuple[list[Episode], int]:
    """Steps 3-4: one batched generate for all reflections, then one for all retries. Also returns how
    many prompts were shortened to fit rollout.max_prompt_len (an attempt that cannot fit is skipped)."""
    erl = ctx.cfg.algo.erl
    truncated, jobs, lessons_of = 0, [], {}
    for s in gated:
        example = example_of[s.group]
        system, q = prompt_parts(ctx, example)
        if q not in lessons_of:  # one retrieval per question (similarity embeds the query)
            lessons_of[q] = memory.retrieve(q, erl.memory_top_k)
        lessons = lessons_of[q]
        build = lambda attempt, kept, system=system, q=q, s=s: encode_turn(ctx, system, fill(  # noqa: E731
            erl.reflection_template, prompt=q, attempt=attempt, feedback=s.feedback, reward=f"{s.reward:.2f}",
            memory=bullets(kept)))
        ids, cut = within_budget(ctx, build, s.text, keep_end=True, then_drop=lessons)
        truncated += cut
        if ids is not None:
            jobs.append((s, example, system, q, ids))
    if not jobs:
        return [], truncated
    outputs = ctx.engine.generate([j[4] for j in jobs], ctx.sampling(1, erl.reflection_max_new_tokens))
    reflections = [out[0] for out in outputs]
    retry_prompts = []
    for (_, _, system, q, _), d in zip(jobs, reflections):
        build = lambda plan, _, system=system, q=q: encode_turn(ctx, system, fill(  # noqa: E731
            erl.retry_template, prompt=q, reflection=plan))
        ids, cut = within_budget(ctx, build, d.text, keep_end=False)  # a plan's start matters most
        truncated += cut
        retry_prompts.append(ids if ids is not None else encode_turn(ctx, system, q))
    retries = [out[0] for out in ctx.engine.generate(retry_prompts, ctx.sampling(1))]
    scored = score_completions(ctx, retries, [j[1] for j in jobs])  # r2 against the original task
    episodes = [Episode(s, e, q, rp, d, yp, y, r.reward, r.success, r.feedback)
                for (s, e, _, q, rp), d, yp, y, r in zip(jobs, reflections, retry_prompts, retries, scored)]
    return episodes, truncated


def experience_samples(ctx: RolloutContext, episodes: list[Episode], ids: GroupIds) -> list[Sample]:
    """Step 6: reflection and retry samples, both rewarded with r2, grouped per `variant`."""
    erl = ctx.cfg.algo.erl
    update = 0 if erl.variant == "packed" else 1
    groups: dict[tuple[str, int], int] = {}
    samples = []
    for e in episodes:
        key = 0 if erl.variant == "packed" else e.attempt.group  # packed: one group per kind per step
        for kind, prompt, c, weight in (("reflection", e.reflection_prompt, e.reflection, erl.reflection_weight),
                                        ("retry", e.retry_prompt, e.retry, erl.retry_weight)):
            if (kind, key) not in groups:  # packed: the same id on every rank, so the group spans the ranks
                groups[kind, key] = PACKED_GROUPS[kind] if erl.variant == "packed" else ids.take()
            overlong = ctx.cfg.algo.overlong_mask and c.truncated
            samples.append(Sample(prompt_ids=prompt, completion_ids=c.token_ids, sample_logp=c.logp,
                                  group=groups[kind, key], reward=e.r2, success=e.success2, feedback=e.feedback2,
                                  text=c.text, truncated=c.truncated, kind=kind, example_id=e.example.id,
                                  loss_weight=0.0 if overlong else weight, update=update, first_attempt=False))
    return samples


def distill_samples(erl: ErlConfig, episodes: list[Episode], ids: GroupIds) -> list[Sample]:
    """Step 7: (original prompt -> y2) for retries with r2 > distill_threshold; advantage preset."""
    pairs = [e for e in episodes if e.r2 is not None and e.r2 > erl.distill_threshold]
    if not pairs:
        return []
    group, sft, coef = ids.take(), erl.internalization == "sft", erl.internalization_coef
    return [Sample(prompt_ids=e.attempt.prompt_ids, completion_ids=e.retry.token_ids, sample_logp=e.retry.logp,
                   group=group, reward=e.r2, success=e.success2, feedback=e.feedback2, text=e.retry.text,
                   truncated=e.retry.truncated, kind="distill", example_id=e.example.id,
                   loss_weight=0.0 if sft else coef, sft_weight=coef if sft else 0.0,
                   update=0 if erl.variant == "packed" else 1, adv=0.0 if sft else e.r2, relabelled=True,
                   first_attempt=False)
            for e in pairs]


def budget_matched_attempts(ctx: RolloutContext, gated: list[Sample], example_of: dict[int, Example]) -> list[Sample]:
    """enable_reflection=False: two fresh first attempts per gated attempt, joining its prompt's group."""
    if not gated:
        return []
    twice = [s for s in gated for _ in range(2)]
    extra = sample_groups(ctx, [example_of[s.group] for s in twice], GroupIds(ctx.rank), n=1,
                          prompts=[s.prompt_ids for s in twice])  # throwaway group ids, replaced below
    for s, src in zip(extra, twice):
        s.group = src.group
        s.loss_weight *= ctx.cfg.algo.erl.attempt_weight
    return extra


def mean(xs: list[Optional[float]]) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else 0.0


def tokens(samples: list[Sample], kind: str) -> float:
    return float(sum(len(s.completion_ids) for s in samples if s.kind == kind))


def erl_metrics(attempts: list[Sample], gated: list[Sample], episodes: list[Episode], samples: list[Sample],
                memory: Memory, truncated: int = 0) -> dict[str, float]:
    lift = [e.r2 - e.attempt.reward for e in episodes if e.r2 is not None]
    return {
        "erl/gated_frac": len(gated) / max(len(attempts), 1),
        "erl/r1": mean([s.reward for s in attempts]),
        "erl/r2": mean([e.r2 for e in episodes]),
        "erl/lift": mean(lift),
        "erl/memory_size": float(len(memory)),
        "erl/prompt_truncated": float(truncated),
        "erl/distill_pairs": float(sum(s.kind == "distill" for s in samples)),
        "erl/tokens_attempt": tokens(samples, "attempt"),
        "erl/tokens_reflection": tokens(samples, "reflection"),
        "erl/tokens_retry": tokens(samples, "retry"),
        "rollout/groups": float(len({s.group for s in samples})),
    }


@register_rollout("erl", config=ErlConfig)
class ERLRollout(Rollout):
    """The ERL rollout (see the module docstring); its only cross-step state is the memory."""

    @classmethod
    def max_new_tokens(cls, cfg) -> int:
        return max(cfg.rollout.max_new_tokens, cfg.algo.erl.reflection_max_new_tokens)

    def __init__(self, ctx: RolloutContext):
        self.ctx = ctx
        erl = ctx.cfg.algo.erl
        size = erl.memory_size if erl.enable_memory and erl.enable_reflection else 0
        embed = None
        if erl.retrieval == "similarity" and size > 0:
            from rltool.actors.text_encoder import MiniLMEncoder  # loads transformers; only for similarity

            embed = MiniLMEncoder()  # at setup, so a missing package fails before the first step
        self.memory = Memory(size, erl.retrieval, embed)

    def __call__(self, step: int) -> tuple[list[Sample], dict[str, float]]:
        ctx, erl = self.ctx, self.ctx.cfg.algo.erl
        ids = GroupIds(ctx.rank)
        examples = ctx.draw(ctx.cfg.trainer.prompts_per_step // ctx.cfg.hardware.num_processes)
        first = ids.next
        attempts = sample_groups(ctx, examples, ids, kind="attempt")
        example_of = dict(zip(range(first, ids.next), examples))  # sample_groups takes one id per example, in order
        for s in attempts:
            s.loss_weight *= erl.attempt_weight
        gated = [s for s in attempts if is_gated(s.reward, erl.gate_threshold)]

        episodes: list[Episode] = []
        truncated = 0
        if not erl.enable_reflection:
            samples = attempts + budget_matched_attempts(ctx, gated, example_of)
        elif gated:
            episodes, truncated = reflect_and_retry(ctx, self.memory, gated, example_of)
            self.remember(episodes, step)
            samples = attempts + experience_samples(ctx, episodes, ids)
            if erl.enable_internalization:
                samples += distill_samples(erl, episodes, ids)
        else:
            samples = attempts
            self.remember([], step)  # a collective under several ranks: every rank joins each step
        return samples, erl_metrics(attempts, gated, episodes, samples, self.memory, truncated)

    def remember(self, episodes: list[Episode], step: int) -> None:
        """Step 5, after all retrievals (this step's lessons serve later steps). Every rank adds every
        rank's new lessons in rank order, so the memory is one and the same on every rank (and the
        checkpoint's copy, written by rank 0, is every rank's)."""
        threshold = self.ctx.cfg.algo.erl.memory_threshold
        mine = [(e.question, e.reflection.text) for e in episodes if e.r2 is not None and e.r2 > threshold]
        for lessons in dist.all_gather_objects(mine):
            for question, reflection in lessons:
                self.memory.add(question, reflection, step)

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
