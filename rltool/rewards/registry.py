"""The reward and feedback registries, so configs pick rewards by name.

A reward is a pure function `(completion, example) -> float | None`, optionally returning
`(value, feedback_text)`. `None` means "could not score": the caller drops that sample from the
group baseline instead of pretending it earned 0 (a silent 0 is a wrong gradient).
A feedback function `(completion, example) -> str` writes the text that ERL reflects on.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

from rltool.envs.base import Example
from rltool.registry import Registry

RewardValue = Union[Optional[float], tuple[Optional[float], str]]
RewardFn = Callable[[str, Example], RewardValue]
FeedbackFn = Callable[[str, Example], str]

REWARDS: Registry[RewardFn] = Registry("reward")
FEEDBACK: Registry[FeedbackFn] = Registry("feedback")


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    return REWARDS.register(name)


def feedback(name: str) -> Callable[[FeedbackFn], FeedbackFn]:
    return FEEDBACK.register(name)


def call_reward(fn: RewardFn, completion: str, example: Example) -> tuple[Optional[float], str]:
    """Normalise the two return shapes to (value, feedback); feedback is '' when absent."""
    out = fn(completion, example)
    if isinstance(out, tuple):
        value, text = out
    else:
        value, text = out, ""
    return (None if value is None else float(value)), text
