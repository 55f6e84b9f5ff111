"""Format reward: did the completion end with a parseable '#### <number>' answer?

Useful as a small shaping term early in training, when a base model rarely follows the answer
format and the correctness reward is almost always 0. It says nothing about being right.
"""
from __future__ import annotations

from rltool.envs.base import Example
from rltool.rewards.parsers import parse_hash_answer
from rltool.rewards.registry import reward


@reward("format")
def format_reward(completion: str, example: Example) -> tuple[float, str]:
    if parse_hash_answer(completion) is None:
        return 0.0, "no '####' final answer found"
    return 1.0, "answer format ok"
