"""Format rewards: did the completion end with a parseable '#### <number>' answer?

`format` says only that; useful as a small shaping term early in training, when a base model rarely
follows the answer format and the correctness reward is almost always 0. It says nothing about being
right, and it can be farmed (see `format_gated`, the version `reward=gsm8k_shaped` uses).
"""
from __future__ import annotations

from rltool.envs.base import Example
from rltool.rewards.parsers import (numbers_equal, parse_calculations, parse_hash_answer, parse_last_number,
                                    parse_numbers)
from rltool.rewards.registry import reward


@reward("format")
def format_reward(completion: str, example: Example) -> tuple[float, str]:
    if parse_hash_answer(completion) is None:
        return 0.0, "no '####' final answer found"
    return 1.0, "answer format ok"


MIN_REASONING_WORDS = 5
"""Words (whitespace-separated) the completion must write before its '####' line to earn format credit."""


@reward("format_gated")
def format_gated(completion: str, question: str) -> tuple[float, str]:
    """Format credit that only a worked answer earns: 1.0 when ALL of these hold, else 0.0.

    1. the last '####' is followed by a parsable number (as `format`);
    2. that number is the last number of the completion (nothing numeric after the answer line:
       a second answer, or rambling on, does not count);
    3. at least MIN_REASONING_WORDS words come before the '####';
    4. the reasoning worked the number out: a correct calculation before the '####' gives it
       ("9 + 6 = 15", GSM8K's "<<9+6=15>>15"; the left side is evaluated, a fake equation does not
       count), or the reasoning states it and it is not one of the question's numbers. A number
       copied from the question earns credit only through a correct calculation that yields it.

    Why the gates: the plain `format` bonus (+0.1) was hacked within 20 steps on arithmetic: in
    groups where every answer is wrong the bonus is the only reward difference, and the cheapest way
    to collect it is to stop reasoning and print "#### <an operand>" (format 100%, accuracy 0%).
    Here a copied operand, a bare guess, a guess after filler words and a fake equation all earn 0,
    exactly what a completion without the format earns, so no gradient points at them. GSM8K's own
    solutions (the gold 'answer' fields of the embedded split) earn it 1,299 times in 1,319.

    Limits, said plainly: the gates are surface checks. Five filler words then "the answer is 7"
    (7 not in the question) passes, and so does a true but pointless "12 * 1 = 12" before
    "#### 12". What keeps that harmless is the weight, not the gates: `reward=gsm8k_shaped` weighs
    this term 0.2 next to a correctness term of 1.0, so any correct answer outscores any wrong one
    however formatted, and a formatted wrong answer never earns more than 0.2. A reward is a pure
    function of (completion, example) and does not know the training step, so the credit is capped
    rather than decayed.
    """
    answer = parse_hash_answer(completion)
    if answer is None:
        return 0.0, "no '####' final answer found"
    if not numbers_equal(parse_last_number(completion) or "", answer):
        return 0.0, "a number follows the '####' answer; end with it"
    before = completion[: completion.rfind("####")]
    if len(before.split()) < MIN_REASONING_WORDS:
        return 0.0, "no reasoning before the '####' answer"
    if any(numbers_equal(r, answer) for r in parse_calculations(before)):
        return 1.0, "answer format ok"
    if any(numbers_equal(n, answer) for n in parse_numbers(question)):
        return 0.0, "the '####' answer copies a number from the question"
    if not any(numbers_equal(n, answer) for n in parse_numbers(before)):
        return 0.0, "the '####' answer is not worked out in the reasoning before it"
    return 1.0, "answer format ok"
