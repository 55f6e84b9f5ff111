"""Pure answer parsers: text in, normalised number string (or None) out.

Kept apart from the rewards so each rule gets exact tests, and so several rewards (strict,
flexible, format) agree on what "the answer" is. Numbers come back with thousands commas and `$`
removed but otherwise as written ("18.0" stays "18.0"); compare them with `numbers_equal`.
"""
from __future__ import annotations

import ast
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


def parse_numbers(text: str) -> list[str]:
    """Every number in the text, in order (commas dropped)."""
    return [_clean(n) for n in _NUMBER.findall(text)]


def parse_last_number(text: str) -> Optional[str]:
    """The last number anywhere in the text: GSM8K's lenient 'flexible extract'."""
    found = parse_numbers(text)
    return found[-1] if found else None


_CALC = re.compile(r"([-+*/x×().,$\d\s]+)=(?=\s*\$?\s*(" + NUMBER + r"))")  # lookahead: 'a = b = c' chains
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_OPERATION = re.compile(r"\d\s*[-+*/]\s*[(\d]")
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b}


def parse_calculations(text: str) -> list[str]:
    """The results of the *correct* calculations written in the text, in order.

    '9 + 6 = 15' and GSM8K's '<<9+6=15>>15' give '15'; '9 + 6 = 16' gives nothing, and so do
    '20 = 20' (no operator) and '2/3 of x = 12' (not arithmetic). The left side may hold numbers,
    + - * / (x and × read as *), parentheses, '$' and thousands commas; it is evaluated exactly
    (Fraction, no eval()), so a fake equation is not a calculation. Unit-laden steps ('60g * 4/5')
    are not recognised.
    """
    out = []
    for m in _CALC.finditer(text):
        lhs = _THOUSANDS.sub("", m.group(1)).split(",")[-1]  # any other comma separates, not groups
        lhs = lhs.replace("$", "").replace("×", "*").replace("x", "*").strip().lstrip("*/+.)").strip()
        if not _OPERATION.search(lhs):
            continue
        value = _evaluate(lhs)
        if value is not None and value == Fraction(_clean(m.group(2))):
            out.append(_clean(m.group(2)))
    return out


def _evaluate(expr: str) -> Optional[Fraction]:
    """+ - * / and parentheses over decimal literals, exactly; None for anything else."""
    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -walk(node.operand) if isinstance(node.op, ast.USub) else walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            return _ARITH[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return walk(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):  # RecursionError: '1+1+...' thousands long
        return None


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
