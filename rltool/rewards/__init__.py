"""Rewards: registered pure functions `(completion, example) -> float | None`, and the Scorer.

One file per reward family; importing this package imports them all, so every `@reward` name is
registered before a config is validated. Nothing here imports torch.
"""
from rltool.rewards import format, gsm8k, math_verify  # noqa: F401  (registration side effect)
from rltool.rewards.registry import FEEDBACK, REWARDS, feedback, reward
from rltool.rewards.score import Score, Scorer, validate_reward_config

__all__ = ["FEEDBACK", "REWARDS", "Score", "Scorer", "feedback", "reward", "validate_reward_config"]
