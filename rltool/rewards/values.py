"""What a reward may return, and why anything else leaves its row unscored.

TRL's rewards return `float | None` and TRL turns them into a float32 tensor, so that is the
contract here: a real number float32 can hold (bool, int, float, numpy and 0-d tensor scalars:
`True` is 1.0, as in TRL), `None` ("could not score"), or `(number | None, feedback_text)`.
Anything else (a string, even "1.0"; a list; nan or inf; 1e39, which float32 holds as inf) is not
a reward: the row is unscored, like None, and the reason names the value's type. A silent 0, or
a run that ends mid-training on one odd value, would both be worse.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

FLOAT32_INF = 2.0 ** 128 - 2.0 ** 103
"""From here float32 rounds to inf (half an ulp above its largest finite value, 3.4028235e38)."""

Value = tuple[Optional[float], str, Optional[str]]
"""(value, feedback, bad): bad is None, or why the return was refused ("returned str '1e39' ...")."""


def shown(x: Any) -> str:
    """The value's type and a short repr, for a one-line reason."""
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def as_number(x: Any) -> tuple[Optional[float], Optional[str]]:
    """(float, None) for a real number float32 can hold; (None, reason) otherwise."""
    if isinstance(x, (str, bytes)):  # float("1e39") would parse: TRL refuses strings, so do we
        return None, f"returned {shown(x)}, not a number"
    if not isinstance(x, numbers.Real):
        if getattr(x, "shape", None) == () and hasattr(x, "item"):  # numpy.bool_, a 0-d array or tensor
            x = x.item()
        if not isinstance(x, numbers.Real):
            return None, f"returned {shown(x)}, not a number"
    try:
        value = float(x)
    except OverflowError:  # an int past float64
        return None, f"returned {type(x).__name__} beyond float32's range"
    if not math.isfinite(value):  # one nan/inf makes every advantage, gradient and weight nan
        return None, f"returned {shown(x)}"
    if abs(value) >= FLOAT32_INF:  # the advantage's float32 tensor would hold inf
        return None, f"returned {shown(x)}, beyond float32's range (|x| <= 3.4e38)"
    return value, None


def reward_value(out: Any) -> Value:
    """One row's return: a number, None, or (number | None, feedback text)."""
    if isinstance(out, tuple):
        if len(out) != 2:
            return None, "", f"returned tuple of {len(out)}, expected (number, feedback)"
        out, text = out
        if not isinstance(text, str):
            return None, "", f"returned tuple ({out!r}, {text!r}) whose feedback is {type(text).__name__}, not text"
    else:
        text = ""
    if out is None:
        return None, text, None
    value, bad = as_number(out)
    return value, text, bad


def feedback_value(out: Any) -> Value:
    """A feedback function's return: text, or the row is unscored."""
    if isinstance(out, str):
        return None, out, None
    return None, "", f"returned {shown(out)}, not text"


def batch_values(out: Any, n: int) -> tuple[Optional[list], Optional[str]]:
    """A batched reward's return as a list of n entries, or (None, reason): every row is then unscored."""
    if hasattr(out, "tolist") and not isinstance(out, (str, bytes)):  # a numpy array or a tensor
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        return None, f"returned {shown(out)}, expected a list of {n} values (one per completion)"
    if len(out) != n:
        return None, f"returned {len(out)} values for {n} completions"
    return list(out), None
