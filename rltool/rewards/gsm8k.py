"""GSM8K correctness rewards: the final number must equal the gold answer.

Two extraction rules, as in lm-eval-harness: `gsm8k_strict` reads only the '####' answer the
instruction asks for; `gsm8k_flexible` takes the last number in the text, which rewards right
answers in the wrong format. Feedback never reveals the gold answer: ERL's reflection prompt
shows it to the policy, and leaking the answer there would teach copying, not solving.
"""
from __future__ import annotations

from rltool.envs.base import Example
from rltool.rewards.parsers import numbers_equal, parse_hash_answer, parse_last_number
from rltool.rewards.registry import feedback, reward


@reward("gsm8k_strict")
def gsm8k_strict(completion: str, example: Example) -> tuple[float, str]:
    pred = parse_hash_answer(completion)
    if pred is None:
        return 0.0, "no '####' final answer found"
    if not numbers_equal(pred, example.answer):
        return 0.0, f"final answer {pred} is wrong"
    return 1.0, "correct"


@reward("gsm8k_flexible")
def gsm8k_flexible(completion: str, example: Example) -> tuple[float, str]:
    pred = parse_last_number(completion)
    if pred is None:
        return 0.0, "no number found"
    if not numbers_equal(pred, example.answer):
        return 0.0, f"final answer {pred} is wrong"
    return 1.0, "correct"


@feedback("binary")
def binary_feedback(completion: str, example: Example) -> str:
    """Only 'correct' / 'incorrect' (strict rule): the ERL ablation with the least informative text."""
    return "correct" if gsm8k_strict(completion, example)[0] > 0 else "incorrect"
