"""Rewards: registered pure functions `(completion, example) -> float | None`, and the Scorer.

One file per reward family; REWARDS imports every module of this package on its first lookup
(rltool/registry.py), so every `@reward` name is registered before a config is validated, with no list
to edit. Nothing here imports torch.
"""
from rltool.rewards.registry import FEEDBACK, REWARDS, feedback, reward
from rltool.rewards.score import Score, Scorer, validate_reward_config

__all__ = ["FEEDBACK", "REWARDS", "Score", "Scorer", "feedback", "reward", "validate_reward_config"]
