"""Reward forms beyond `(completion, example)`: parameters filled by name, batched functions, TRL's
signature unchanged, conversation context, per-reward parts, `reward.module`, and every error line."""
import textwrap

import pytest

import rltool.rewards.registry as registry
from rltool.config import ConfigError, RewardConfig, RewardTerm
from rltool.envs import ENVS
from rltool.envs.base import Env, Example
from rltool.rewards.registry import REWARDS, Row, call_reward, load_reward_module, reward, row_columns
from rltool.rewards.score import Scorer, env_columns, reward_metrics, validate_reward_config
from rltool.schemas import env_config


@pytest.fixture(autouse=True)
def scratch(monkeypatch):
    """Rewards registered by a test vanish after it (test_rewards.py checks every registered name has a case)."""
    REWARDS.names()  # rltool's own rewards are discovered first, so they outlive the copy
    monkeypatch.setattr(REWARDS, "_entries", dict(REWARDS._entries))
    monkeypatch.setattr(registry, "_LOADED", {})


def ex(answer="18", question="What is 9 * 2?", **meta) -> Example:
    return Example(id="t-0", question=question, answer=answer, meta=meta)


def cfg(*terms, success=None, module=None, length_penalty=0.0) -> RewardConfig:
    terms = [(t, 1.0) if isinstance(t, str) else t for t in terms]
    return RewardConfig(name="t", terms=[RewardTerm(n, w) for n, w in terms], success=success or terms[0][0],
                        length_penalty=length_penalty, module=module)


# ---------------------------------------------------------------- parameters filled by name

def test_parameters_are_filled_by_name():
    @reward("exact")
    def exact(completion, answer):
        return float(completion.strip() == answer)

    assert call_reward(REWARDS["exact"], " 18 ", ex("18")) == (1.0, "")
    assert call_reward(REWARDS["exact"], "17", ex("18")) == (0.0, "")


def test_order_and_every_fixed_name():
    seen = {}

    @reward("all")
    def everything(answer, id, question, example, prompt, completion):
        seen.update(answer=answer, id=id, question=question, example=example, prompt=prompt, completion=completion)
        return 1

    e = ex()
    call_reward(REWARDS["all"], "c", e)
    assert seen == {"answer": "18", "id": "t-0", "question": "What is 9 * 2?", "example": e,
                    "prompt": "What is 9 * 2?", "completion": "c"}  # no prompt passed: the question
    messages = [{"role": "user", "content": "What is 9 * 2? Put the final answer after '####'."}]
    call_reward(REWARDS["all"], "c", e, prompt=messages)
    assert seen["prompt"] == messages


def test_meta_columns_defaults_and_kwargs():
    @reward("by_level")
    def by_level(completion, level, bonus=0.5):
        return len(completion) * level + bonus

    @reward("kw")
    def kw(completion, **kwargs):
        return 0.0, ",".join(sorted(kwargs))

    assert call_reward(REWARDS["by_level"], "abc", ex(level=2)) == (6.5, "")  # 3 * 2 + 0.5
    assert call_reward(REWARDS["kw"], "abc", ex(level=2)) == (0.0, "answer,id,level,question")


def test_a_column_shadowed_by_a_fixed_name():
    @reward("q")
    def q(question):
        return float(question == "What is 9 * 2?")

    assert call_reward(REWARDS["q"], "x", ex(question="What is 9 * 2?", **{"question_": 1})) == (1.0, "")
    assert call_reward(REWARDS["q"], "x", Example("i", "What is 9 * 2?", "18", {"question": "other"})) == (1.0, "")


def test_historical_positional_form_still_works():
    assert call_reward(lambda c, e: len(c) + len(e.answer), "abc", ex("18")) == (5.0, "")  # 3 + 2
    assert call_reward(lambda completion, example: (None, "no"), "abc", ex()) == (None, "no")


# ---------------------------------------------------------------- batched and TRL

def test_batched_is_one_call_with_lists():
    calls = []

    @reward("judge", batched=True)
    def judge(completions, answer):
        calls.append((list(completions), list(answer)))
        return [float(c == a) for c, a in zip(completions, answer)]

    scorer = Scorer(cfg("judge"), max_new_tokens=10)
    scores = scorer.score_batch(["18", "17", "5"], [ex("18"), ex("18"), ex("5")], [1, 1, 1])
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0]
    assert calls == [(["18", "17", "5"], ["18", "18", "5"])]


def test_batched_with_singular_names():
    @reward("lens", batched=True)
    def lens(completion, question):
        return [(len(c), q) for c, q in zip(completion, question)]

    assert REWARDS["lens"].score([Row("ab", ex(question="q1")), Row("abc", ex(question="q2"))]) == [(2.0, "q1", None), (3.0, "q2", None)]


def reward_len(completions, **kwargs):
    """TRL's documentation example (GRPOTrainer, "Using a custom reward function"), verbatim."""
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    """TRL's conversational example, verbatim."""
    import re
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def test_trl_function_unchanged():
    REWARDS.register("reward_len")(registry.Reward.of("reward_len", reward_len))
    rows = [Row("x" * 5, ex()), Row("x" * 20, ex()), Row("x" * 26, ex())]
    assert REWARDS["reward_len"].score(rows) == [(-15.0, "", None), (0.0, "", None), (-6.0, "", None)]  # -|20-5|, 0, -|20-26|
    assert REWARDS["reward_len"].batched


def test_trl_prompts_and_columns_as_keyword_lists():
    got = {}

    def correctness(prompts, completions, answer, **kwargs):
        got.update(prompts=prompts, kwargs=kwargs)
        return [None if a == "" else float(c == a) for c, a in zip(completions, answer)]

    r = registry.Reward.of("correctness", correctness)
    assert r.score([Row("18", ex("18")), Row("7", ex("")), Row("6", ex("5"))]) == [(1.0, "", None), (None, "", None), (0.0, "", None)]
    assert got["prompts"] == ["What is 9 * 2?"] * 3
    assert got["kwargs"] == {"id": ["t-0"] * 3, "question": ["What is 9 * 2?"] * 3}


def test_trl_conversational_completions_follow_the_prompt():
    r = registry.Reward.of("format_reward_func", format_reward_func)
    messages = [{"role": "user", "content": "q"}]
    good = "<think>9*2</think><answer>18</answer>"
    assert r.score([Row(good, ex(), prompt=messages), Row("18", ex(), prompt=messages)]) == [(1.0, "", None), (0.0, "", None)]
    seen = []

    def kw_only(**kwargs):
        seen.append(kwargs)
        return [0.0]

    registry.Reward.of("k", kw_only, batched=True).score([Row("c", ex())])
    assert seen[0]["completions"] == ["c"] and seen[0]["prompts"] == ["What is 9 * 2?"] and "example" not in seen[0]


# ---------------------------------------------------------------- conversation context

def test_conversation_and_actor_are_injected_when_given():
    @reward("last_word")
    def last_word(conversation, actor):
        mine = [t["content"] for t in conversation if t["actor"] == actor]
        return float(conversation[-1]["actor"] == actor), f"{len(mine)} turns"

    convo = [{"actor": "Bob", "role": "assistant", "content": "hi"},
             {"actor": "Alice", "role": "assistant", "content": "18"},
             {"actor": "Bob", "role": "assistant", "content": "#### 18"}]
    scorer = Scorer(cfg("last_word"), max_new_tokens=10)
    s = scorer("#### 18", ex(), 3, conversation=convo, actor="Bob")
    assert (s.reward, s.feedback) == (1.0, "2 turns")
    scores = scorer.score_batch(["#### 18", "18"], [ex(), ex()], [3, 1], conversations=[convo, convo], actors=["Bob", "Alice"])
    assert [(x.reward, x.feedback) for x in scores] == [(1.0, "2 turns"), (0.0, "1 turns")]
    with pytest.raises(ConfigError) as err:  # a single-turn caller gives no conversation
        scorer("#### 18", ex(), 3)
    assert str(err.value).startswith("reward 'last_word' (test_conversation_and_actor_are_injected_when_given.<locals>"
                                     ".last_word in test_reward_signatures.py:")
    assert str(err.value).endswith(": parameters 'actor', 'conversation' cannot be filled from the row; "
                                   "available: answer, completion, example, id, prompt, question")


# ---------------------------------------------------------------- weights, parts, logging

def test_weights_parts_and_metrics():
    @reward("chars", batched=True)
    def chars(completions):
        return [len(c) / 10 for c in completions]

    @reward("maybe")
    def maybe(completion):
        return None if completion == "?" else 1.0

    scorer = Scorer(cfg(("gsm8k_strict", 1.0), ("chars", -0.5), ("maybe", 2.0), success="gsm8k_strict",
                        length_penalty=0.1), max_new_tokens=10)
    scores = scorer.score_batch(["#### 18", "#### 17", "?"], [ex(), ex(), ex()], [5, 10, 1])
    # 1*1 - 0.5*0.7 + 2*1 - 0.1*5/10 = 2.6 ; 1*0 - 0.5*0.7 + 2*1 - 0.1*10/10 = 1.55 ; maybe is None -> None
    assert [s.reward for s in scores[:2]] == [pytest.approx(2.6), pytest.approx(1.55)]
    assert scores[2].reward is None
    assert scores[0].parts == {"gsm8k_strict": 1.0, "chars": pytest.approx(0.7), "maybe": 1.0}
    assert scores[2].parts == {"gsm8k_strict": 0.0, "chars": pytest.approx(0.1), "maybe": None}
    assert [s.success for s in scores] == [1.0, 0.0, 0.0]
    # raw means, None left out: strict (1+0+0)/3, chars (0.7+0.7+0.1)/3, maybe (1+1)/2
    assert reward_metrics(scores) == {"reward/gsm8k_strict": pytest.approx(1 / 3), "reward/chars": pytest.approx(0.5),
                                      "reward/maybe": 1.0}
    # one completion through __call__ is the same arithmetic
    assert scorer("#### 18", ex(), 5).reward == pytest.approx(2.6)


# ---------------------------------------------------------------- errors: one line, naming the function

def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_wrong_return_length_and_type():
    # not a ConfigError mid-run any more: each row is (None, "", why), and a run counts and names it
    @reward("short", batched=True)
    def short(completions):
        return [1.0]

    @reward("scalar", batched=True)
    def scalar(completions):
        return 1.0

    @reward("word")
    def word(completion):
        return "yes"

    rows = [Row("a", ex()), Row("b", ex())]
    assert REWARDS["short"].score(rows) == [(None, "", "returned 1 values for 2 completions")] * 2
    assert REWARDS["scalar"].score(rows) == [(None, "", "returned float 1.0, expected a list of 2 values "
                                                        "(one per completion)")] * 2
    assert REWARDS["word"].score(rows) == [(None, "", "returned str 'yes', not a number")] * 2


def test_a_raising_reward_propagates_with_its_name():
    @reward("boom")
    def boom(completion, answer):
        return 1 / 0

    with pytest.raises(RuntimeError) as err:  # called directly, it raises, naming itself
        REWARDS["boom"].score([Row("#### 18", ex())])
    assert str(err.value) == "reward 'boom' raised ZeroDivisionError: division by zero"
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    # in a run (#14) the sample is unscored instead of ending the run, and the error is kept by name
    scorer = Scorer(cfg("boom"), max_new_tokens=10)
    assert scorer("#### 18", ex(), 1).reward is None
    assert scorer.last_error == {"boom": "ZeroDivisionError: division by zero"}


def test_signatures_refused_at_registration():
    with pytest.raises(ConfigError) as err:
        reward("po")(lambda completion, answer, /: 1.0)
    assert "parameter 'completion' is positional-only; rewards are called with keyword arguments, by name" in one_line(err)
    with pytest.raises(ConfigError) as err:
        @reward("both")
        def both(completion, completions):
            return [1.0]
    assert one_line(err).endswith("takes both the singular and the plural of a name (completion, completions); use one")


def test_unsatisfiable_parameter_at_build_time_with_columns():
    @reward("needs_level")
    def needs_level(completion, level):
        return level

    columns = row_columns(ex())
    with pytest.raises(ConfigError) as err:
        Scorer(cfg("needs_level"), max_new_tokens=10, columns=columns)
    assert one_line(err).endswith(": parameter 'level' cannot be filled from the row; "
                                  "available: answer, completion, example, id, prompt, question")
    Scorer(cfg("needs_level"), max_new_tokens=10, columns=row_columns(ex(level=1)))  # the column exists: fine
    with pytest.raises(ConfigError) as err:  # without columns: at the first call that lacks it
        Scorer(cfg("needs_level"), max_new_tokens=10)("x", ex(), 1)
    assert "parameter 'level' cannot be filled" in one_line(err)


def test_env_columns(monkeypatch):
    assert env_columns(env_config(name="gsm8k+arithmetic")) == {"completion", "prompt", "example", "id", "question", "answer"}
    assert env_columns(env_config(name="nope")) is None

    class Talk(Env):
        @classmethod
        def columns(cls, cfg):
            return ("conversation", "actor", "topic")

    class Debate(Env):
        @classmethod
        def columns(cls, cfg):
            return ("conversation", "actor")

    monkeypatch.setitem(ENVS._entries, "talk", Talk)
    monkeypatch.setitem(ENVS._entries, "debate", Debate)
    assert env_columns(env_config(name="talk+debate")) - env_columns(env_config(name="gsm8k")) == {"conversation", "actor"}


# ---------------------------------------------------------------- reward.module

USER_FILE = '''
from rltool.rewards import reward

@reward("user_exact")
def exact(completion, answer):
    return float(completion.strip() == answer)

def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]

def helper(text):          # not a reward: no TRL signature
    return text

def _private(completions, **kwargs):
    return [0.0 for _ in completions]
'''


def write(tmp_path, text, name="my_rewards.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_module_registers_decorated_and_trl_functions(tmp_path):
    path = write(tmp_path, USER_FILE)
    assert load_reward_module(path) == ("reward_len", "user_exact")
    assert load_reward_module(path) == ("reward_len", "user_exact")  # imported once: validate, then train
    scorer = Scorer(cfg(("user_exact", 1.0), ("reward_len", 0.1), module=path), max_new_tokens=10)
    # 1*1 + 0.1 * -|20-2| = -0.8
    assert scorer("18", ex("18"), 1).reward == pytest.approx(-0.8)
    assert "helper" not in REWARDS and "_private" not in REWARDS


def test_unknown_name_lists_the_modules_rewards(tmp_path):
    path = write(tmp_path, USER_FILE)
    with pytest.raises(ConfigError) as err:
        validate_reward_config(cfg("user_exatc", module=path))
    assert one_line(err).startswith("reward.terms[0].name='user_exatc': unknown reward; valid: ")
    assert "reward_len" in str(err.value) and "user_exact" in str(err.value)


HALF = "from rltool.rewards import reward\n\n@reward('half')\ndef half(completion):\n    return 0.5\n"


@pytest.mark.parametrize("text, message", [
    ("def f(:\n    pass\n", "SyntaxError at line 1: invalid syntax"),
    ("import numpy\nimport no_such_package_xyz\n",
     "ModuleNotFoundError at line 2 while importing: No module named 'no_such_package_xyz'"),
    (HALF + "@reward('format')\ndef f(completion):\n    return 1.0\n",  # 'half' registers, then the clash
     "ValueError at line 6 while importing: reward 'format' is registered twice"),
    ("def gsm8k_strict(completions, **kwargs):\n    return [0.0]\n",
     "function 'gsm8k_strict' has the name of a registered reward; rename it or register it with @reward(\"another_name\")"),
    ("from rltool.rewards import reward\n\n@reward('po')\ndef f(completion, /):\n    return 1.0\n",
     "reward 'po' (f in bad.py:3): parameter 'completion' is positional-only"),
])
def test_module_errors_name_the_file(tmp_path, text, message):
    path = write(tmp_path, text, name="bad.py")
    with pytest.raises(ConfigError) as err:
        validate_reward_config(cfg("gsm8k_strict", module=path))
    assert one_line(err).startswith(f"reward.module={path!r}: ")
    assert message in str(err.value)
    assert "half" not in REWARDS and "po" not in REWARDS  # a failed import leaves nothing registered


def test_missing_module_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_reward_config(cfg("gsm8k_strict", module=str(tmp_path / "nope.py")))
    assert one_line(err) == f"reward.module={str(tmp_path / 'nope.py')!r}: no such file"


def test_batched_rows_must_agree_on_the_columns_taken():
    @reward("lvl", batched=True)
    def lvl(completions, level):
        return level

    @reward("plain", batched=True)
    def plain(completions):
        return [0.0] * len(completions)

    rows = [Row("a", ex(level=1)), Row("b", ex())]
    assert REWARDS["plain"].score(rows) == [(0.0, "", None), (0.0, "", None)]  # `level` differs but is not taken
    with pytest.raises(ConfigError) as err:
        REWARDS["lvl"].score(rows)
    assert one_line(err).endswith(": the rows of one batch differ in columns it takes (level); "
                                  "a batched reward needs them in every row")


def test_registry_entry_still_calls_like_the_function():
    assert REWARDS["gsm8k_strict"]("#### 18", ex("18")) == (1.0, "correct")


def test_nan_and_inf_rewards_are_unscored_not_numbers():
    # float(inf) is a float: scored as is, it would make the group's advantages, the gradient and the weights nan
    from rltool.rewards.registry import call_reward

    for bad in (float("inf"), float("-inf"), float("nan")):
        assert call_reward(lambda completion, example: bad, "x", Example("i", "q", "1")) == (None, "")
        assert call_reward(lambda completion, example: (bad, "why"), "x", Example("i", "q", "1")) == (None, "why")
    assert call_reward(lambda completion, example: 2, "x", Example("i", "q", "1")) == (2.0, "")
