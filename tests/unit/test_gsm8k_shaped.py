"""reward=gsm8k_shaped on hand-made completions: what each earns, worked out by hand, hacks included.

Shaped reward = 1.0 x gsm8k_flexible (last number == gold) + 0.2 x format_gated; success = gsm8k_strict.
"""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rltool.cli import conf_dir
from rltool.config import register_configs
from rltool.envs.base import Example
from rltool.rewards import REWARDS, Scorer
from rltool.rewards.parsers import parse_calculations
from rltool.rewards.registry import call_reward

QUESTION = "Tom has 12 apples and buys 35 more. How many apples does he have now?"
TOM = Example(id="t-0", question=QUESTION, answer="47")
MULT = Example(id="t-1", question="What is 47 * 23?", answer="1081")

# (example, completion, format_gated, shaped reward = flexible + 0.2 * format_gated, strict success)
CASES = [
    # honest answers
    (TOM, "He starts with 12 and buys 35 more, so 12 + 35 = 47.\n#### 47", 1.0, 1.2, 1.0),   # 1 + 0.2
    (TOM, "He starts with 12 and buys 35 more, so 12 + 35 = 47 apples.", 0.0, 1.0, 0.0),     # right, no format
    (TOM, "He starts with 12 and buys 35 more, so 12 + 35 = 48.\n#### 48", 1.0, 0.2, 0.0),   # wrong, formatted
    (TOM, "He has 12 + 35 = 47 apples.\n#### $47.", 1.0, 1.2, 1.0),                          # '$' and '.' allowed
    (TOM, "so 12 + 35 = 47\n#### forty-seven", 0.0, 1.0, 0.0),                               # no number after ####
    (MULT, "47 * 23 = 47 * 20 + 47 * 3 = 940 + 141 = 1081\n#### 1081", 1.0, 1.2, 1.0),
    # the hacks: each earns 0, what a completion without the format earns
    (TOM, "#### 12", 0.0, 0.0, 0.0),                                         # an operand, nothing else
    (TOM, "#### 35", 0.0, 0.0, 0.0),
    (MULT, "#### 47", 0.0, 0.0, 0.0),                                        # the collapse seen on arithmetic
    (MULT, "#### 23", 0.0, 0.0, 0.0),
    (TOM, "Let me think about this carefully.\n#### 12", 0.0, 0.0, 0.0),    # filler, then an operand
    (TOM, "Tom has 12 apples and buys 35 more.\n#### 35", 0.0, 0.0, 0.0),   # copied question, then an operand
    (TOM, "#### 50", 0.0, 0.0, 0.0),                                         # a bare guess
    (TOM, "Let me think about this carefully.\n#### 50", 0.0, 0.0, 0.0),    # filler, then a guess never worked out
    (TOM, "so 12 + 35 = 48 apples\n#### 48\nNext: 3 + 4 = 7", 0.0, 0.0, 0.0),  # numbers after the answer line
    (TOM, "so 12 + 35 = 47 apples\n#### 47\n#### 12", 0.0, 0.0, 0.0),      # a second answer: the last one counts
    (TOM, "so 12 + 35 = 12 apples\n#### 12", 0.0, 0.0, 0.0),               # a fake equation does not launder a copy
    (MULT, "47 * 23 = 47 so the answer is\n#### 47", 0.0, 0.0, 0.0),        # nor does a wrong product
]


@pytest.fixture(scope="module")
def scorer():
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["output_dir=x", "env=gsm8k", "reward=gsm8k_shaped"])
    return Scorer(OmegaConf.to_object(cfg).reward, max_new_tokens=256)


@pytest.mark.parametrize("example, completion, fmt, shaped, success", CASES)
def test_hand_computed_rewards(scorer, example, completion, fmt, shaped, success):
    assert call_reward(REWARDS["format_gated"], completion, example)[0] == fmt
    score = scorer(completion, example, num_tokens=10)
    assert score.reward == pytest.approx(shaped, abs=1e-12)
    assert score.success == success
    assert score.parts["format_gated"] == fmt


def test_correctness_always_dominates(scorer):
    # any right answer (flexible rule) outscores every wrong one, however it is formatted
    scores = [(scorer(c, e, 10).reward, c) for e, c, *_ in CASES]
    right = [r for (r, _), (e, c, *_) in zip(scores, CASES) if call_reward(REWARDS["gsm8k_flexible"], c, e)[0] == 1.0]
    wrong = [r for (r, _), (e, c, *_) in zip(scores, CASES) if call_reward(REWARDS["gsm8k_flexible"], c, e)[0] == 0.0]
    assert min(right) == pytest.approx(1.0) and max(wrong) == pytest.approx(0.2)
    assert max(wrong) < min(right)


def test_copying_an_operand_earns_no_more_than_no_format():
    # every number of the question, alone after '####', with or without text before it
    for example in (TOM, MULT):
        for n in ("12", "35") if example is TOM else ("47", "23"):
            for prefix in ("", "Let me work it out step by step.\n", example.question + "\n"):
                value, text = call_reward(REWARDS["format_gated"], f"{prefix}#### {n}", example)
                assert value == 0.0, (prefix, n, text)


def test_a_number_from_the_question_earns_format_credit_only_through_a_calculation(scorer):
    ex = Example(id="t-2", question="Ann has 5 pens and gives away 0 of them. How many pens has she?", answer="5")
    worked = scorer("She gives away 0 pens, so she still has 5 - 0 = 5.\n#### 5", ex, 10)
    assert worked.parts["format_gated"] == 1.0 and worked.reward == pytest.approx(1.2)   # 1 + 0.2 x 1
    # the documented limit: stated without a calculation it looks like a copy; correctness still pays it
    stated = scorer("She gives none of her pens away, so she has 5.\n#### 5", ex, 10)
    assert stated.parts["format_gated"] == 0.0 and stated.reward == 1.0 and stated.success == 1.0


@pytest.mark.parametrize("text, results", [
    ("so 9 * 2 = 18", ["18"]),
    ("<<9+6=15>>15 then <<15/3=5>>5", ["15", "5"]),     # GSM8K's calculator annotations
    ("9 + 6 = 16", []),                                  # wrong: not a calculation
    ("20 = 20", []),                                     # no operator
    ("2/3 * x = 12", []),                                # a variable is not arithmetic
    ("1,000 + 234 = 1,234", ["1234"]),                   # thousands commas
    ("3, 4 + 5 = 9", ["9"]),                             # a separating comma: 4 + 5
    ("$12 x 3 = $36", ["36"]),                           # x as times, dollars
    ("60 * 4/5 = 240/5 = 48", ["48"]),                   # a chain: 60*4/5 = 48 != 240; 240/5 = 48
    ("(2 + 3) * 4 = 20", ["20"]),
    ("2.5 * 4 = 10.0", ["10.0"]),                        # exact: Fraction, not float
    ("12 - 20 = -8", ["-8"]),
    ("5 / 0 = 1", []),
    ("9 ** 99 = 1", []),                                 # powers are not evaluated at all
])
def test_parse_calculations(text, results):
    assert parse_calculations(text) == results
