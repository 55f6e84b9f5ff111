"""Exact tests for the answer parsers: each case is an input a model really produces."""
import pytest

from rltool.rewards.parsers import numbers_equal, parse_gsm8k_gold, parse_hash_answer, parse_last_number


@pytest.mark.parametrize("text, expected", [
    ("9 * 2 = 18\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("#### $1,234.00.", "1234.00"),
    ("####-5", "-5"),
    ("#### 18.", "18"),
    ("#### 3.75 dollars", "3.75"),
    ("#### 5\nwait, no\n#### 6", "6"),          # the LAST marker wins
    ("#### 5\n####", None),                       # ...even when it has no number
    ("#### The answer is 18", None),              # the number must follow the marker
    ("The answer is 18", None),
    ("", None),
])
def test_parse_hash_answer(text, expected):
    assert parse_hash_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $18 every day.", "18"),
    ("The total is 1,234,567 apples", "1234567"),
    ("x = -3", "-3"),
    ("10-3=7", "7"),
    ("5-3", "3"),                                 # binary minus, not -3
    ("It costs $2.50.", "2.50"),
    ("1,2,3", "3"),                               # not a thousands group
    ("12,3456", "3456"),
    ("no numbers here", None),
])
def test_parse_last_number(text, expected):
    assert parse_last_number(text) == expected


def test_parse_gsm8k_gold():
    assert parse_gsm8k_gold("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18") == "18"
    assert parse_gsm8k_gold("... #### 1,450,000") == "1450000"
    assert parse_gsm8k_gold("#### -4") == "-4"
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_gold("no marker")


@pytest.mark.parametrize("a, b, expected", [
    ("18", "18.0", True),
    ("18.00", "18", True),
    ("1,234", "1234", True),
    ("$5", "5", True),
    ("0.1", "0.10", True),
    ("-3", "3", False),
    ("18", "18.0001", False),
    ("abc", "18", False),
    ("", "0", False),
])
def test_numbers_equal(a, b, expected):
    assert numbers_equal(a, b) is expected
