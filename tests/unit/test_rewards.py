"""Every registered reward and feedback function, and the Scorer's arithmetic, with exact values."""
import pytest

from rltool.config import ConfigError, RewardConfig, RewardTerm
from rltool.envs.base import Example
from rltool.rewards import FEEDBACK, REWARDS, Scorer, validate_reward_config
from rltool.rewards.registry import call_reward

# name -> [(completion, gold answer, expected value, expected feedback)]
REWARD_CASES = {
    "gsm8k_strict": [
        ("9 * 2 = 18\n#### 18", "18", 1.0, "correct"),
        ("#### 18.0", "18", 1.0, "correct"),
        ("#### 1,234", "1234", 1.0, "correct"),
        ("#### 17", "18", 0.0, "final answer 17 is wrong"),
        ("The answer is 18", "18", 0.0, "no '####' final answer found"),
    ],
    "gsm8k_flexible": [
        ("The answer is 18", "18", 1.0, "correct"),
        ("#### 18.", "18", 1.0, "correct"),
        ("18 or maybe 17", "18", 0.0, "final answer 17 is wrong"),
        ("I don't know", "18", 0.0, "no number found"),
    ],
    "format": [
        ("#### 17", "18", 1.0, "answer format ok"),
        ("#### $1,234.50", "18", 1.0, "answer format ok"),
        ("#### seventeen", "18", 0.0, "no '####' final answer found"),
        ("17", "18", 0.0, "no '####' final answer found"),
    ],
    "format_gated": [  # the question is "q": no numbers to copy (tests/unit/test_gsm8k_shaped.py has those)
        ("so 9 * 2 = 18\n#### 18", "18", 1.0, "answer format ok"),
        ("so 9 * 2 = 17\n#### 17", "18", 1.0, "answer format ok"),
        ("#### 18", "18", 0.0, "no reasoning before the '####' answer"),
        ("17", "18", 0.0, "no '####' final answer found"),
    ],
    "math_verify": [
        ("so 9*2 = 18\n#### 18", "18", 1.0, "correct"),
        ("The answer is $\\boxed{18}$", "18", 1.0, "correct"),
        ("the answer is 18.0", "18", 1.0, "correct"),
        ("the answer is 0.5", "\\frac{1}{2}", 1.0, "correct"),
        ("#### 17", "18", 0.0, "final answer 17 is wrong"),
        ("no idea", "18", 0.0, "no final answer found"),
        ("#### 18", "", None, ""),                    # gold unreadable: could not score
    ],
}

# name -> [(completion, gold answer, expected text)]
FEEDBACK_CASES = {
    "binary": [("#### 18", "18", "correct"), ("#### 17", "18", "incorrect"), ("18", "18", "incorrect")],
}


def ex(answer: str) -> Example:
    return Example(id="t-0", question="q", answer=answer)


@pytest.mark.parametrize("name, completion, answer, value, text",
                         [(n, *case) for n, cases in REWARD_CASES.items() for case in cases])
def test_reward(name, completion, answer, value, text):
    assert call_reward(REWARDS[name], completion, ex(answer)) == (value, text)


@pytest.mark.parametrize("name, completion, answer, text",
                         [(n, *case) for n, cases in FEEDBACK_CASES.items() for case in cases])
def test_feedback(name, completion, answer, text):
    assert FEEDBACK[name](completion, ex(answer)) == text


def test_every_registered_function_has_a_test():
    # rltool's own rewards; tests and scripts (bench_vs_trl's bench_chars) may register more in this process
    shipped = {n for n in REWARDS.names() if REWARDS[n].fn.__module__.startswith("rltool.")}
    assert shipped - set(REWARD_CASES) == set()
    assert {n for n in FEEDBACK.names() if FEEDBACK[n].__module__.startswith("rltool.")} - set(FEEDBACK_CASES) == set()


@pytest.mark.parametrize("name", [n for n in REWARDS.names() if REWARDS[n].fn.__module__.startswith("rltool.")])
def test_feedback_never_reveals_the_gold(name):  # rltool's own: test modules collected earlier register others
    for completion in ("#### 17", "17", "$\\boxed{17}$", "no idea"):
        _, text = call_reward(REWARDS[name], completion, ex("4096"))
        assert "4096" not in text


def test_call_reward_accepts_plain_values():
    assert call_reward(lambda c, e: 1, "", ex("1")) == (1.0, "")
    assert call_reward(lambda c, e: None, "", ex("1")) == (None, "")


def cfg(terms, success="gsm8k_strict", feedback=None, length_penalty=0.0) -> RewardConfig:
    return RewardConfig(name="test", terms=[RewardTerm(n, w) for n, w in terms], success=success,
                        feedback=feedback, length_penalty=length_penalty)


def test_scorer_weights_and_length_penalty():
    scorer = Scorer.from_config(cfg([("gsm8k_strict", 1.0), ("format", 0.5)], length_penalty=0.2), max_new_tokens=100)
    # 1.0*1 + 0.5*1 - 0.2 * 25/100 = 1.45
    s = scorer("#### 18", ex("18"), num_tokens=25)
    assert s.reward == pytest.approx(1.45)
    assert (s.success, s.feedback, s.parts) == (1.0, "correct", {"gsm8k_strict": 1.0, "format": 1.0})
    # 1.0*0 + 0.5*1 - 0.2 * 100/100 = 0.3
    s = scorer("#### 17", ex("18"), num_tokens=100)
    assert s.reward == pytest.approx(0.3)
    assert (s.success, s.feedback) == (0.0, "final answer 17 is wrong")


def test_scorer_repeated_term_adds_weights():
    scorer = Scorer.from_config(cfg([("gsm8k_strict", 1.0), ("gsm8k_strict", 2.0)]), max_new_tokens=10)
    assert scorer("#### 18", ex("18"), num_tokens=3).reward == pytest.approx(3.0)  # 1*1 + 2*1


def test_success_is_separate_from_shaped_reward():
    scorer = Scorer.from_config(cfg([("format", 1.0)], success="gsm8k_strict"), max_new_tokens=10)
    s = scorer("#### 17", ex("18"), num_tokens=0)
    assert (s.reward, s.success) == (1.0, 0.0)  # well formatted, wrong
    assert s.parts == {"format": 1.0, "gsm8k_strict": 0.0}
    assert s.feedback == "final answer 17 is wrong"  # the success reward's own feedback


def test_none_term_makes_shaped_reward_none():
    scorer = Scorer.from_config(cfg([("format", 1.0), ("math_verify", 1.0)], length_penalty=0.5), max_new_tokens=10)
    s = scorer("#### 18", ex(""), num_tokens=5)  # math_verify cannot read gold ''
    assert s.reward is None
    assert s.parts == {"format": 1.0, "math_verify": None, "gsm8k_strict": 0.0}
    assert s.success == 0.0


def test_named_feedback_function_overrides():
    scorer = Scorer.from_config(cfg([("gsm8k_strict", 1.0)], feedback="binary"), max_new_tokens=10)
    assert scorer("#### 17", ex("18"), num_tokens=1).feedback == "incorrect"


@pytest.mark.parametrize("config, key", [
    (cfg([("gsm8k_strict", 1.0), ("gsm8k_strictt", 1.0)]), "reward.terms[1].name='gsm8k_strictt'"),
    (cfg([("format", 1.0)], success="acc"), "reward.success='acc'"),
    (cfg([("format", 1.0)], feedback="nope"), "reward.feedback='nope'"),
])
def test_unknown_names_are_config_errors(config, key):
    for build in (validate_reward_config, lambda c: Scorer.from_config(c, max_new_tokens=10)):
        with pytest.raises(ConfigError) as err:
            build(config)
        assert key in str(err.value)
        assert "valid:" in str(err.value)
