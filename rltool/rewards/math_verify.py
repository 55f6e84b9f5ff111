"""Symbolic answer checking with HuggingFace's math-verify (LaTeX, fractions, \\boxed{}, sets).

More forgiving than the GSM8K rules ('\\boxed{18}', '18.0', '$18' all match 18), and the choice
for answers that are not plain integers. math_verify is imported inside the function: it pulls
in sympy (~0.36 s), which `rltool validate` should not pay for.

Limit: math_verify bounds parse/verify time with signal.alarm, which works only on the main
thread; calling this reward from a worker thread raises ValueError. Its `signal.alarm(0)` does not
cancel rltool's own reward deadline (a timer thread, rltool/rewards/runner.py).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from rltool.envs.base import Example
from rltool.rewards.registry import reward


@lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> Optional[list]:
    import math_verify

    # The gold is a bare answer ('72', '\\frac{1}{2}'); '$...$' makes it LaTeX so both parse.
    gold = math_verify.parse(f"${answer}$")
    return gold or None  # [] means math_verify could not read the gold: unscoreable, not wrong


@reward("math_verify")
def math_verify_reward(completion: str, example: Example) -> tuple[Optional[float], str]:
    import math_verify

    gold = _parse_gold(example.answer)
    if gold is None:
        return None, ""
    pred = math_verify.parse(completion)
    if not pred:
        return 0.0, "no final answer found"
    if not math_verify.verify(gold, pred):
        return 0.0, f"final answer {pred[-1]} is wrong"
    return 1.0, "correct"
