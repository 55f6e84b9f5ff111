"""Turns one completion into a shaped reward, a binary success and feedback text.

The shaped reward (what the advantage sees) and success (what we report as accuracy) are kept
apart, as in torchtune's `shaped_correctness_reward`: a format bonus or length penalty must never
show up as "accuracy". Names are checked when the Scorer is built, so a typo fails before any
model loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rltool.config import ConfigError, RewardConfig
from rltool.envs.base import Example
from rltool.registry import Registry
from rltool.rewards.registry import FEEDBACK, REWARDS, call_reward


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


def validate_reward_config(cfg: RewardConfig) -> None:
    """Raise ConfigError naming the key of the first unknown reward/feedback name (for `rltool validate`)."""
    for i, term in enumerate(cfg.terms):
        _check_name(REWARDS, f"reward.terms[{i}].name", term.name)
    _check_name(REWARDS, "reward.success", cfg.success)
    if cfg.feedback is not None:
        _check_name(FEEDBACK, "reward.feedback", cfg.feedback)


class Scorer:
    """`scorer(completion, example, num_tokens) -> Score`; stateless after construction."""

    def __init__(self, cfg: RewardConfig, max_new_tokens: int):
        validate_reward_config(cfg)
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r}: must be >= 1")
        self.terms = [(t.name, REWARDS[t.name], t.weight) for t in cfg.terms]
        self.success_name = cfg.success
        self.success_fn = REWARDS[cfg.success]
        self.feedback_fn = FEEDBACK[cfg.feedback] if cfg.feedback is not None else None
        self.length_penalty = cfg.length_penalty
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_config(cls, cfg: RewardConfig, max_new_tokens: int) -> "Scorer":
        return cls(cfg, max_new_tokens)

    def __call__(self, completion: str, example: Example, num_tokens: int) -> Score:
        results: dict[str, tuple[Optional[float], str]] = {}  # each reward runs once per completion
        for name, fn, _ in self.terms:
            if name not in results:
                results[name] = call_reward(fn, completion, example)
        if self.success_name not in results:
            results[self.success_name] = call_reward(self.success_fn, completion, example)

        values = [results[name][0] for name, _, _ in self.terms]
        shaped = None
        if all(v is not None for v in values):
            shaped = sum(w * v for (_, _, w), v in zip(self.terms, values))
            shaped -= self.length_penalty * num_tokens / self.max_new_tokens

        success_value, success_text = results[self.success_name]
        text = self.feedback_fn(completion, example) if self.feedback_fn is not None else success_text
        return Score(
            reward=shaped,
            success=1.0 if success_value is not None and success_value > 0 else 0.0,
            feedback=text,
            parts={name: value for name, (value, _) in results.items()},
        )
