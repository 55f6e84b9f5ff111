"""Turns completions into shaped rewards, binary successes, feedback text and per-reward parts.

The shaped reward (what the advantage sees) and success (what we report as accuracy) are kept
apart, as in torchtune's `shaped_correctness_reward`: a format bonus or length penalty must never
show up as "accuracy". Names are checked when the Scorer is built, so a typo fails before any
model loads; `reward.module` is imported first, so its names count.

Where a reward's parameters are checked against the row's columns: at build time when the caller
passes `columns` (`validate_reward_config(cfg, columns)`, `Scorer(cfg, n, columns=...)`),
otherwise when a row lacks one, at the first call that meets it. Either way it is one ConfigError
line naming the function, the missing parameter and the names available.

A reward that raises, overruns `reward.timeout_s`, or returns None, nan or inf leaves that sample
unscored (rltool/rewards/runner.py) and is counted per function: `step_metrics()` returns
`reward/failed/<name>` (samples) and `reward/failed_frac/<name>` (share of the step's calls) once per
step, and `last_error[name]` keeps the latest error text for the run's warning or abort line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Collection, Optional, Sequence

from rltool.config import ConfigError, EnvConfig, RewardConfig
from rltool.envs.base import Example
from rltool.registry import Registry
from rltool.rewards.registry import COLUMNS, FEEDBACK, FIXED, REWARDS, Row, load_reward_module
from rltool.rewards.runner import RewardRunner


@dataclass
class Score:
    reward: Optional[float]
    """Shaped reward: sum of weight * term minus the length penalty; None if any term could not score."""
    success: float
    """1.0 if the success reward's value > 0, else 0.0 (also 0.0 when it could not score)."""
    feedback: str
    parts: dict[str, Optional[float]]
    """Raw (unweighted) value of every reward computed, by name: the terms and the success reward."""


def _check_name(registry: Registry, key: str, name: str) -> None:
    if name not in registry:
        raise ConfigError(f"{key}={name!r}: unknown {registry.kind}; valid: {', '.join(registry.names())}")


def env_columns(cfg: EnvConfig) -> Optional[set[str]]:
    """Names every row of the env offers a reward: the fixed ones, Example's fields, and the extra
    names each env class declares in a `columns` class attribute (meta keys; for multi-turn envs
    also "conversation", "actor"). An env composed with `+` offers what all its parts offer.
    None when an env name is unknown (validate_env_config reports that)."""
    from rltool.envs import ENVS  # here: rltool.envs imports gsm8k, which imports this package

    names = cfg.name.split("+")
    if not all(n in ENVS for n in names):
        return None
    extra = set.intersection(*(set(getattr(ENVS[n], "columns", ())) for n in names))
    return {*FIXED, *COLUMNS, *extra}


def validate_reward_config(cfg: RewardConfig, columns: Optional[Collection[str]] = None) -> None:
    """Raise ConfigError naming the key of the first problem: reward.module, then unknown reward/feedback
    names, then (with `columns`: the names every row offers) a reward parameter no row can fill."""
    if cfg.module is not None:
        load_reward_module(cfg.module)
    for i, term in enumerate(cfg.terms):
        _check_name(REWARDS, f"reward.terms[{i}].name", term.name)
    _check_name(REWARDS, "reward.success", cfg.success)
    if cfg.feedback is not None:
        _check_name(FEEDBACK, "reward.feedback", cfg.feedback)
    if columns is not None:
        for name in dict.fromkeys([t.name for t in cfg.terms] + [cfg.success]):
            REWARDS[name].check(columns)


class Scorer:
    """`scorer(completion, example, num_tokens) -> Score`, or `score_batch` for many; stateless after construction.

    Every reward runs once per completion (a name used as a term and as success is not recomputed);
    a batched reward runs once per `score_batch` call. Per-reward raw values are in `Score.parts`,
    averaged for logging by `reward_metrics`.
    """

    def __init__(self, cfg: RewardConfig, max_new_tokens: int, columns: Optional[Collection[str]] = None):
        validate_reward_config(cfg, columns)
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r}: must be >= 1")
        self.terms = [(t.name, t.weight) for t in cfg.terms]
        self.rewards = {name: REWARDS[name] for name in dict.fromkeys([t.name for t in cfg.terms] + [cfg.success])}
        self.success_name = cfg.success
        self.feedback_fn = FEEDBACK[cfg.feedback] if cfg.feedback is not None else None
        self.length_penalty = cfg.length_penalty
        self.max_new_tokens = max_new_tokens
        self.runner = RewardRunner(cfg.timeout_s, cfg.workers, cfg.module)
        self.failed: dict[str, int] = {}  # name -> unscored samples since the last step_metrics()
        self.calls: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self.warned: set[str] = set()
        self.say = os.environ.get("RANK", "0") == "0"  # launched ranks all score; the first says it

    def step_metrics(self) -> dict[str, float]:
        """`reward/failed/<name>` and `reward/failed_frac/<name>` since the last call (every reward
        that ran appears, 0 included, so a streak is visible); then the counts start again."""
        out: dict[str, float] = {}
        for name, calls in self.calls.items():
            out[f"reward/failed/{name}"] = float(self.failed.get(name, 0))
            out[f"reward/failed_frac/{name}"] = self.failed.get(name, 0) / max(calls, 1)
        self.failed, self.calls = {}, {}
        return out

    def close(self) -> None:
        """Stops reward worker processes (reward.workers > 0); in-process scoring has nothing to stop."""
        self.runner.close()

    @classmethod
    def from_config(cls, cfg: RewardConfig, max_new_tokens: int, columns: Optional[Collection[str]] = None) -> "Scorer":
        return cls(cfg, max_new_tokens, columns)

    def __call__(self, completion: str, example: Example, num_tokens: int, *, prompt: Any = None,
                 conversation: Optional[list[dict]] = None, actor: Optional[str] = None) -> Score:
        """One completion. prompt: what it was generated from (chat messages); conversation, actor: the
        multi-turn context, for rewards that take those parameters."""
        return self.score_rows([Row(completion, example, prompt, conversation, actor)], [num_tokens])[0]

    def score_batch(self, completions: Sequence[str], examples: Sequence[Example], num_tokens: Sequence[int], *,
                    prompts: Optional[Sequence[Any]] = None, conversations: Optional[Sequence[list[dict]]] = None,
                    actors: Optional[Sequence[str]] = None) -> list[Score]:
        """Many completions (e.g. a step's whole rollout): batched rewards see them in one call.
        The optional context lists are aligned with `completions`."""
        n = len(completions)
        for key, seq in (("examples", examples), ("num_tokens", num_tokens), ("prompts", prompts),
                         ("conversations", conversations), ("actors", actors)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"score_batch: {len(seq)} {key} for {n} completions")
        rows = [Row(c, e, prompts[i] if prompts is not None else None,
                    conversations[i] if conversations is not None else None,
                    actors[i] if actors is not None else None) for i, (c, e) in enumerate(zip(completions, examples))]
        return self.score_rows(rows, num_tokens)

    def score_rows(self, rows: Sequence[Row], num_tokens: Sequence[int]) -> list[Score]:
        results = {name: self._run(name, r, rows) for name, r in self.rewards.items()}  # name -> [(value, text)] per row
        scores = []
        for i, (row, tokens) in enumerate(zip(rows, num_tokens)):
            values = [results[name][i][0] for name, _ in self.terms]
            shaped = None
            if all(v is not None for v in values):
                shaped = sum(w * v for (_, w), v in zip(self.terms, values))
                shaped -= self.length_penalty * tokens / self.max_new_tokens
            success_value, success_text = results[self.success_name][i]
            text = self.feedback_fn(row.completion, row.example) if self.feedback_fn is not None else success_text
            scores.append(Score(reward=shaped, success=1.0 if success_value is not None and success_value > 0 else 0.0,
                                feedback=text, parts={name: results[name][i][0] for name in self.rewards}))
        return scores


    def _run(self, name: str, r, rows: Sequence[Row]) -> list[tuple[Optional[float], str]]:
        out, failed, error = self.runner.call(r, rows)
        unscored = sum(v is None for v, _ in out)  # raised or timed out, or returned None / nan / inf
        self.calls[name] = self.calls.get(name, 0) + len(rows)
        self.failed[name] = self.failed.get(name, 0) + unscored
        if error is not None:
            self.last_error[name] = error
        elif unscored > failed:
            self.last_error.setdefault(name, "returned None, nan or inf")
        if unscored and name not in self.warned:
            self.warned.add(name)
            if self.say:
                print(f"warning: reward {name!r} could not score {unscored} of {len(rows)} samples "
                      f"({self.last_error[name]}); they are unscored, counted in reward/failed/{name} (printed once)")
        return out


def reward_metrics(scores: Sequence[Score]) -> dict[str, float]:
    """`reward/<name>`: each reward's raw mean over the completions it could score (None left out;
    a reward that scored none is absent). The loop averages these per step, next to reward/mean."""
    out: dict[str, float] = {}
    for name in dict.fromkeys(n for s in scores for n in s.parts):
        values = [s.parts[name] for s in scores if s.parts.get(name) is not None]
        if values:
            out[f"reward/{name}"] = sum(values) / len(values)
    return out
