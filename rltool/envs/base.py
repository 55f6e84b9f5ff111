"""The environment base class: what the actor sees, how an episode is played and how its answer is
evaluated. Every hook the loops call is declared on `Env` with its single-turn default, so an env
overrides only what it does differently (scoring belongs to the reward group, rltool/rewards/).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str
    """Gold final answer as a string (e.g. '42')."""
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Env:
    """Base class of every environment: a subclass defines `train_examples`, `eval_examples` and `messages`,
    and gets the single-turn default of every other hook the loops call (one prompt, `group_size` sampled
    completions of the policy, its greedy completion as the eval answer). Multi-actor envs (collab.py,
    parallel.py) override `play` and `answers`; an env with its own measure of success overrides `evaluate`."""

    name: str
    """The registered name; example ids start with it, so a composed env keeps its parts' problems apart."""
    episodes: str = "single_turn"
    """The kind of episode (single_turn | multi_actor | article): rltool validate (cli.check_env_actors) refuses
    an algo.rollout whose `plays` does not list it."""

    @classmethod
    def columns(cls, cfg) -> tuple[str, ...]:
        """Row columns besides Example's own that rewards can take by name (rewards/score.py's env_columns,
        at validation): e.g. a conversation's "conversation" and "actor", or env=dataset's data columns."""
        return ()

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ConfigError on the user's data or keys (validate_env_config calls it before any model
        loads, e.g. env=dataset reads its file here). Default: nothing to check."""

    @classmethod
    def check_actors(cls, cfg, actors: list[str]) -> None:
        """Raise ConfigError if the env's keys and the run's actor names disagree (cli.check_env_actors, before
        any model loads: round-spec, answer_from, drafter/combiner). Default: any actors will do."""

    def train_examples(self) -> list[Example]:
        """The training problems, in order (the sampler shuffles them each epoch)."""
        raise NotImplementedError

    def eval_examples(self) -> list[Example]:
        """The held-out problems (rltool/evaluate.py); never in train_examples."""
        raise NotImplementedError

    def messages(self, example: Example) -> list[dict]:
        """Chat messages for the policy: [{'role': 'system'|'user', 'content': str}, ...]."""
        raise NotImplementedError

    def play(self, ctx, examples: list[Example], ids) -> list:
        """Training rollout of `examples` (a rollout's `play` step, e.g. GroupRollout's): one group of Samples per
        example, group ids taken from `ids`. Default: `group_size` single-turn completions of the policy."""
        from rltool.algos.rollouts import sample_groups  # here: rltool.algos imports rltool.envs

        return sample_groups(ctx, examples, ids)

    def answers(self, actors: dict, examples: list[Example], cfg) -> list:
        """One greedy Completion per example, the answer held-out eval scores (rltool/evaluate.py). Default: the
        policy's greedy completion of `messages`. eval.n > 1 (pass@n) samples that same prompt, so it is
        reported for single-turn episodes only."""
        from rltool.engines.engine import Sampling
        from rltool.engines.prompts import encode_chat

        policy = actors[cfg.lead_actor.name]
        prompts = [encode_chat(policy.tokenizer, self.messages(e), cfg.rollout.max_prompt_len) for e in examples]
        greedy = Sampling(greedy=True, max_new_tokens=cfg.eval.max_new_tokens)
        return [c for (c,) in policy.engine.generate(prompts, greedy)]

    def evaluate(self, actors: dict, cfg) -> tuple[dict[str, float], list[dict]] | None:
        """Held-out evaluation by the env's own measure, as (metrics, rows), e.g. article_curriculum's value
        log-probs; rltool/evaluate.py calls it first. Default None: the standard eval of `answers` on the run's
        reward and `eval_metrics`."""
        return None

    def eval_metrics(self) -> dict[str, str]:
        """Extra held-out measures (rltool/evaluate.py): metric name -> registered reward whose raw value is
        averaged, e.g. gsm8k's accuracy_strict -> gsm8k_strict. Default: none beyond eval/success and eval/reward."""
        return {}

    @property
    def parts(self) -> list[Env]:
        """The environments this one is made of: itself, or a composed env's parts (compose.py). Eval
        reports per part (eval/<part>/...) when there are several and takes eval.size problems of each."""
        return [self]

    def owner(self, example: Example) -> Env:
        """The part that made `example` (its messages, rollout and answer rule): itself, in a single env."""
        return self
