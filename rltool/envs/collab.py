"""Collaborative environments: several actors talk a problem through in turns, then one answer counts.

`env=collab_arithmetic` / `env=collab_gsm8k`: the problems of a single-turn task (`env.task`), a
round-spec saying who speaks when (`env.round_spec`, default `solver -> checker`), a Jinja2 system
prompt per actor (`env.system_prompts`), and an answer rule (`env.answer_from`: the last speaker, or
a named actor's last turn). Every actor sees its own turns as `assistant` and the others' as `user`
("Checker says: ...", `env.speaker_format`), in its own chat template (rltool/engines/conversation.py).

Training: `group_size` conversations per problem, all following one schedule by default
(`env.schedule_per=group`) so a group's members are comparable; the answer is scored with the run's
reward (which also sees the conversation and which actor it scores); each trainable actor gets one
trajectory per conversation, trained on its own tokens only, with advantages normalised within its
own groups (the loop splits samples by actor first).
"""
from __future__ import annotations

import zlib

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from dataclasses import dataclass

from rltool.config import ConfigError, check_choice
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.round_spec import parse, schedules
from rltool.envs.task_based import OnTask, TaskConfig
from rltool.engines.conversation import Speaker, run_turns, start_conversations
from rltool.engines.engine import Sampling
from rltool.records import Completion, Sample

DEFAULT_PROMPTS = {
    "solver": "You are {{ name }}, solving a problem together with {{ others }}. Work it out step by step and end "
              "with the final answer after '####'.",
    "checker": "You are {{ name }}, checking the solution {{ others }} proposes. Point out any mistake, then give the "
               "final answer after '####'.",
}
FALLBACK_PROMPT = "You are {{ name }}, working on a problem together with {{ others }}. End with the final answer after '####'."


@dataclass
class CollabConfig(TaskConfig):
    """The keys of a conversation between actors."""

    round_spec: str = "solver -> checker"
    """Who speaks when (rltool/envs/round_spec.py), e.g. `solver -> checker -> (solver/checker)*2`."""
    schedule_per: str = "group"
    """One schedule per group (its members stay comparable) | row."""
    speaker_format: str = "{name} says: {text}"
    """How another actor's turn reads (as a user message)."""
    answer_from: str = "last"
    """Whose answer counts: last (the final turn's speaker) or an actor's name (its last turn)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("env.schedule_per", self.schedule_per, ["group", "row"])


JINJA = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
"""Renders env.system_prompts: sandboxed, since a template from a config must not run code."""


def system_prompt(cfg: CollabConfig, actor: str, actors: list[str], question: str, meta: dict) -> str:
    """Actor `actor`'s system prompt: its Jinja2 template (env.system_prompts) over the problem, never its answer.
    Rendered sandboxed: a template comes from a config, so it may not reach Python internals (`__class__`,
    `__globals__`, ...): jinja2's SecurityError, like a typo, is one ConfigError line naming the key."""
    template = cfg.system_prompts.get(actor) or DEFAULT_PROMPTS.get(actor, FALLBACK_PROMPT)
    others = " and ".join(a for a in actors if a != actor) or "nobody"
    try:
        return JINJA.from_string(template).render(question=question, name=actor.capitalize(), others=others.title(),
                                                  actors=actors, meta=meta)
    except (TemplateError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError) as e:
        raise ConfigError(f"env.system_prompts.{actor}: {type(e).__name__}: {e}") from None


class CollabEnv(OnTask):
    """A single-turn task's problems, played as a conversation between actors."""

    episodes = "multi_actor"
    """Played by its own `play` (rltool validate refuses a rollout that does not drive it)."""

    @classmethod
    def columns(cls, cfg: CollabConfig) -> tuple[str, ...]:
        """Offered to rewards besides the problem's own: the whole dialogue and the actor being scored."""
        return ("conversation", "actor")

    @classmethod
    def check_actors(cls, cfg: CollabConfig, actors: list[str]) -> None:
        """Before any model loads: the round-spec and answer_from name actors, and every system prompt renders
        in the sandbox (a problem's meta keys are unknown here: those are checked at the first rollout)."""
        parse(cfg.round_spec, actors)  # RoundSpecError names the position
        if cfg.answer_from not in ("last", *actors):
            raise ConfigError(f"env.answer_from={cfg.answer_from!r}: must be last or an actor ({', '.join(actors)})")
        for actor in dict.fromkeys([*actors, *cfg.system_prompts]):
            try:
                system_prompt(cfg, actor, actors, "What is 2 + 3?", {})
            except ConfigError as e:
                if "UndefinedError" not in str(e):
                    raise

    # ---- conversations ----
    def opening(self, example: Example, actor: str, actors: list[str]) -> list[dict]:
        """Actor `actor`'s system prompt and the task."""
        system = system_prompt(self.cfg, actor, actors, example.question, example.meta)
        task = [m for m in self.task.messages(example) if m["role"] != "system"]
        return [{"role": "system", "content": system}] + task

    def spec(self, actors: list[str]):
        return parse(self.cfg.round_spec, actors)

    def converse(self, actors: dict, examples: list[Example], schedules_: list[list[str]], sampling: dict[str, Sampling],
                 max_prompt_len: int):
        """Play one conversation per (example, schedule) pair, every turn batched per actor."""
        names = list(actors)
        speakers = {n: Speaker(actors[n].engine, actors[n].tokenizer, sampling[n]) for n in names}
        starts = [{n: self.opening(e, n, names) for n in names} for e in examples]
        conversations = start_conversations(speakers, starts, schedules_)
        run_turns(conversations, speakers, max_prompt_len, self.cfg.speaker_format)
        return conversations

    def answer(self, conversation) -> Completion:
        """The turn whose text is the team's answer (an empty one if that actor never spoke)."""
        turns = conversation.turns
        if self.cfg.answer_from != "last":
            turns = [t for t in turns if t[0] == self.cfg.answer_from]
        return turns[-1][1] if turns else Completion([], [], "", False)

    def play(self, ctx, examples: list[Example], ids) -> list[Sample]:
        """Training rollout: group_size conversations per problem; a trajectory per trainable actor each."""
        cfg, G = ctx.cfg, ctx.cfg.trainer.group_size
        names = list(ctx.actors)
        self._check_answer_from(names)
        # seeded by the run seed and the problems: reproducible, and a resume replays the same schedules
        seed = zlib.crc32(f"{cfg.seed}:{','.join(e.id for e in examples)}".encode())
        plan = schedules(self.spec(names), seed, len(examples), G, self.cfg.schedule_per)
        rows = [e for e in examples for _ in range(G)]
        sampling = {n: a.sampling() for n, a in ctx.actors.items()}
        conversations = self.converse(ctx.actors, rows, plan, sampling, cfg.rollout.max_prompt_len)
        groups = [ids.take() for _ in examples]
        dialogue = [[{"actor": who, "role": "assistant", "content": c.text} for who, c in conv.turns]
                    for conv in conversations]
        answers = [self.answer(c) for c in conversations]
        learners = [n for n, a in ctx.actors.items() if a.trainable]
        scores = score_episodes(ctx, answers, rows, dialogue, learners)
        samples = []
        for i, conversation in enumerate(conversations):
            for name in learners:
                prompt, completion, mask, logp = conversation.views[name].trajectory()
                if not any(mask):  # this actor never spoke in this conversation: nothing of its own to train
                    continue
                score = scores[i][name]
                # DAPO's overlong mask: the actor's own turn was cut at max_new_tokens, or the context ran out
                cut = conversation.ended_early or any(c.truncated for who, c in conversation.turns if who == name)
                samples.append(Sample(prompt_ids=prompt, completion_ids=completion, sample_logp=logp,
                                      group=groups[i // G], reward=score.reward, success=score.success,
                                      feedback=score.feedback, text=answers[i].text, example_id=rows[i].id,
                                      truncated=conversation.ended_early or answers[i].truncated,
                                      completion_mask=mask, actor=name,
                                      loss_weight=0.0 if cfg.algo.overlong_mask and cut else 1.0,
                                      info={"reward_parts": score.parts, "schedule": conversation.schedule}))
        return samples

    def answers(self, actors: dict, examples: list[Example], cfg) -> list[Completion]:
        """Eval: one greedy conversation per problem, on a schedule fixed by env.seed; the team's answer."""
        names = list(actors)
        self._check_answer_from(names)
        plan = schedules(self.spec(names), self.cfg.seed, len(examples), 1, "group")
        greedy = {n: Sampling(greedy=True, max_new_tokens=cfg.eval.max_new_tokens) for n in names}
        return [self.answer(c) for c in self.converse(actors, examples, plan, greedy, cfg.rollout.max_prompt_len)]

    def _check_answer_from(self, names: list[str]) -> None:
        if self.cfg.answer_from != "last" and self.cfg.answer_from not in names:
            raise ConfigError(f"env.answer_from={self.cfg.answer_from!r}: must be last or an actor ({', '.join(names)})")


def score_episodes(ctx, answers: list[Completion], rows: list[Example], dialogue: list[list[dict]],
                   learners: list[str]) -> list[dict]:
    """Each conversation's score, per trainable actor, in one Scorer call (DAPO's overlong penalty on the
    answer's length included). The team's answer is scored once per conversation: a judge runs once and
    teammates share one reward. Only when a reward reads `actor` (by name, or through **kwargs) is each
    conversation scored once per trainable actor, every reward of the run then included."""
    from rltool.algos.rollouts import score_completions  # here: rltool.algos imports rltool.envs

    if not any("actor" in r.params or r.var_kw for r in ctx.scorer.rewards.values()):
        team = score_completions(ctx, answers, rows, conversations=dialogue)
        return [dict.fromkeys(learners, s) for s in team]
    flat = [(i, n) for i in range(len(answers)) for n in learners]
    scored = iter(score_completions(ctx, [answers[i] for i, _ in flat], [rows[i] for i, _ in flat],
                                    conversations=[dialogue[i] for i, _ in flat], actors=[n for _, n in flat]))
    return [{n: next(scored) for n in learners} for _ in answers]


@register_env("collab", config=CollabConfig)
class Collab(CollabEnv):
    """Any single-turn task as a conversation: env=collab env.task=<task> (conf/env/collab.yaml)."""

    name = "collab"


@register_env("collab_arithmetic", config=CollabConfig)
class CollabArithmetic(CollabEnv):
    name = "collab_arithmetic"
    TASK = "arithmetic"


@register_env("collab_gsm8k", config=CollabConfig)
class CollabGSM8K(CollabEnv):
    name = "collab_gsm8k"
    TASK = "gsm8k"
