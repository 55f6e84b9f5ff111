"""Pure answer parsers: text in, normalised number string (or None) out.

Kept apart from the rewards so each rule gets exact tests, and so several rewards (strict,
flexible, format) agree on what "the answer" is. Numbers come back with thousands commas and `$`
removed but otherwise as written ("18.0" stays "18.0"); compare them with `numbers_equal`.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

# A number: thousands groups "1,234,567" (only when every group has 3 digits) or plain digits,
# with an optional decimal part. A leading "-" counts only when it can't be a binary minus
# ("5-3" ends in 3, not -3). Bare ".5" and exponents are not recognised.
NUMBER = r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER = re.compile(NUMBER)
_HASH = re.compile(r"####\s*\$?\s*(" + NUMBER + r")")


def _clean(number: str) -> str:
    return number.replace(",", "")


def parse_hash_answer(text: str) -> Optional[str]:
    """The number right after the LAST '####' (whitespace and a '$' may sit between).

    Only the last marker counts, so a model that writes '#### 5' and then '#### 6' answered 6;
    if the last marker has no number after it, there is no answer (earlier ones don't rescue it).
    """
    idx = text.rfind("####")
    if idx < 0:
        return None
    m = _HASH.match(text, idx)
    return _clean(m.group(1)) if m else None


def parse_last_number(text: str) -> Optional[str]:
    """The last number anywhere in the text: GSM8K's lenient 'flexible extract'."""
    found = _NUMBER.findall(text)
    return _clean(found[-1]) if found else None


def parse_gsm8k_gold(answer_field: str) -> str:
    """GSM8K's `answer` field is worked reasoning then '#### 72'; returns '72' (commas dropped)."""
    idx = answer_field.rfind("####")
    if idx < 0:
        raise ValueError(f"GSM8K answer field has no '####': {answer_field[-80:]!r}")
    return _clean(answer_field[idx + 4:].strip())


def numbers_equal(a: str, b: str) -> bool:
    """Exact numeric equality via Fraction: '18.0' == '18', with no float rounding ('0.1' is 1/10).

    Non-numbers compare unequal rather than raising: a garbled answer is simply wrong.
    """
    try:
        return Fraction(_clean(a).lstrip("$")) == Fraction(_clean(b).lstrip("$"))
    except (ValueError, ZeroDivisionError):
        return False
