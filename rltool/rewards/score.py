"""Turns completions into shaped rewards, binary successes, feedback text and per-reward parts.

The shaped reward (what the advantage sees) and success (what we report as accuracy) are kept
apart, as in torchtune's `shaped_correctness_reward`: a format bonus or length penalty must never
show up as "accuracy". Names are checked when the Scorer is built, so a typo fails before any
model loads; `reward.module` is imported first, so its names count.

Where a reward's parameters are checked against the row's columns: at build time when the caller
passes `columns` (`validate_reward_config(cfg, columns)`, `Scorer(cfg, n, columns=...)`),
otherwise when a row lacks one, at the first call that meets it. Either way it is one ConfigError
line naming the function, the missing parameter and the names available.

A reward (or feedback function) that raises, overruns `reward.timeout_s`, or returns None or
anything that is not a reward (a string, nan, 1e39: values.py) leaves that sample unscored
(rltool/rewards/runner.py) and is counted per function: `step_metrics()` returns
`reward/failed/<name>` (samples) and `reward/failed_frac/<name>` (share of the step's calls) once per
step, and `last_error[name]` keeps the latest reason for the run's warning (rltool/logs.py Tally,
printed by rank 0 with every rank's reasons: `errors_over_ranks`) or abort line (rltool/guard.py).

Each scoring call is the reward phase, with its own deadline `reward.phase_timeout_s`: the rows not
scored by then are unscored, and the enclosing phase's deadline (`generate`, rollout.timeout_s) does
not count the time (rltool/watchdog.py `clock`). A reward the deadline cannot interrupt (C code that
ignores signals) stops the run soon after, naming the reward phase.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Collection, Optional, Sequence

from rltool.config import ConfigError, EnvConfig, RewardConfig
from rltool.envs.base import Example
from rltool.registry import Registry
from rltool.rewards.registry import COLUMNS, FEEDBACK, FIXED, REWARDS, Row, feedback_entry, load_reward_module
from rltool.rewards.runner import RewardRunner
from rltool.watchdog import clock

GRACE_S = 30.0
"""After reward.phase_timeout_s, how long a call that ignores its deadline has before the run stops."""


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
    names each env class returns from `Env.columns(cfg)` (multi-actor envs: "conversation", "actor";
    env=dataset: the data's columns). An env composed with `+` offers what all its parts offer.
    None when an env name is unknown (validate_env_config reports that)."""
    from rltool.envs import ENVS  # here: rltool.envs imports gsm8k, which imports this package

    names = cfg.name.split("+")
    if not all(n in ENVS for n in names):
        return None
    extra = set.intersection(*(set(ENVS[n].columns(cfg)) for n in names))
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
        self.feedback = feedback_entry(cfg.feedback) if cfg.feedback is not None else None
        self.length_penalty = cfg.length_penalty
        self.max_new_tokens = max_new_tokens
        self.runner = RewardRunner(cfg.timeout_s, cfg.workers, cfg.module)
        self.phase_timeout_s = cfg.phase_timeout_s
        self.failed: dict[str, int] = {}  # name -> unscored samples since the last step_metrics()
        self.calls: dict[str, int] = {}
        self.last_error: dict[str, str] = {}  # name -> the latest reason it left a sample unscored

    def step_metrics(self) -> dict[str, float]:
        """`reward/failed/<name>` and `reward/failed_frac/<name>` since the last call (every reward
        that ran appears, 0 included, so a streak is visible); then the counts start again."""
        out: dict[str, float] = {}
        for name, calls in self.calls.items():
            out[f"reward/failed/{name}"] = float(self.failed.get(name, 0))
            out[f"reward/failed_frac/{name}"] = self.failed.get(name, 0) / max(calls, 1)
        self.failed, self.calls = {}, {}
        return out

    def errors_over_ranks(self, metrics: dict[str, float]) -> dict[str, str]:
        """`last_error` of every rank (rank 0's first), for the rewards failing anywhere in the combined
        step `metrics`. A collective when a count is > 0: every rank has the same combined counts, so
        every rank joins it or none does."""
        if not any(v > 0 for k, v in metrics.items() if k.startswith("reward/failed/")):
            return dict(self.last_error)
        from rltool import dist  # here: this package imports no torch (reward workers start fast)

        merged: dict[str, str] = {}
        for errors in dist.all_gather_objects(self.last_error):
            for name, error in errors.items():
                merged.setdefault(name, error)
        return merged

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
        phase, until = self.phase_timeout_s, None
        grace = min(GRACE_S, phase)
        # the reward phase's own deadline: past it, rows are left unscored (`until`); a call that cannot be
        # interrupted stops the run `grace` later, naming this phase, not the enclosing one
        with clock("reward", None, phase + grace if phase > 0 else 0,
                   f"reward.phase_timeout_s={phase:g}, then {grace:g} s for a reward that ignored it"):
            if phase > 0:
                until = time.monotonic() + phase
            results = {name: self._run(name, r, rows, until)[0] for name, r in self.rewards.items()}  # [(value, text)]
            feedback = self._run(self.feedback.name, self.feedback, rows, until) if self.feedback is not None else None
        scores = []
        for i, (row, tokens) in enumerate(zip(rows, num_tokens)):
            values = [results[name][i][0] for name, _ in self.terms]
            shaped = None
            if all(v is not None for v in values):
                shaped = sum(w * v for (_, w), v in zip(self.terms, values))
                shaped -= self.length_penalty * tokens / self.max_new_tokens
            success_value, text = results[self.success_name][i]
            if feedback is not None:
                texts, reasons = feedback
                text = texts[i][1]
                if reasons[i] is not None:  # no feedback to reflect on: the row is unscored
                    shaped = None
            scores.append(Score(reward=shaped, success=1.0 if success_value is not None and success_value > 0 else 0.0,
                                feedback=text, parts={name: results[name][i][0] for name in self.rewards}))
        return scores

    def values(self, name: str, rows: Sequence[Row]) -> list[Optional[float]]:
        """Any registered reward's raw value per row, isolated and counted like the terms (eval's measures)."""
        return [value for value, _ in self._run(name, REWARDS[name], rows, None)[0]]

    def _run(self, name: str, r, rows: Sequence[Row], until: Optional[float]) -> tuple[list, list[Optional[str]]]:
        """[(value, text)] and the reasons of the failed rows (runner.call), counted under `name`."""
        out, reasons = self.runner.call(r, rows, until)
        unscored = sum(v is None for v, _ in out) if not r.feedback else sum(w is not None for w in reasons)
        self.calls[name] = self.calls.get(name, 0) + len(rows)
        self.failed[name] = self.failed.get(name, 0) + unscored  # raised, timed out, returned None or no reward
        error = next((w for w in reasons if w is not None), None)  # the call's first reason
        if error is not None:
            self.last_error[name] = error
        elif unscored:
            self.last_error.setdefault(name, "returned None (could not score)")
        return out, reasons


def reward_metrics(scores: Sequence[Score]) -> dict[str, float]:
    """`reward/<name>`: each reward's raw mean over the completions it could score (None left out;
    a reward that scored none is absent). The loop averages these per step, next to reward/mean."""
    out: dict[str, float] = {}
    for name in dict.fromkeys(n for s in scores for n in s.parts):
        values = [s.parts[name] for s in scores if s.parts.get(name) is not None]
        if values:
            out[f"reward/{name}"] = sum(values) / len(values)
    return out
