"""Environment data: sizes, held-out splits that never leak into train, determinism, composition."""
import os
import subprocess
import sys

import pytest

from rltool.config import ConfigError
from rltool.envs import ENVS, make_env
from rltool.envs.arithmetic import ArithmeticEnv
from rltool.envs.compose import ComposedEnv
from rltool.envs.gsm8k import GSM8KEnv, load_embedded
from rltool.schemas import env_config


def questions(examples):
    return [e.question for e in examples]


def test_embedded_gsm8k_has_all_test_problems():
    rows = load_embedded()
    assert len(rows) == 1319
    assert rows[0]["answer"].endswith("#### 18")


def test_gsm8k_split_sizes_disjoint_and_deterministic():
    env = make_env(env_config(name="gsm8k", eval_size=200, seed=7))
    train, eval = env.train_examples(), env.eval_examples()
    assert (len(train), len(eval)) == (1119, 200)
    assert {e.id for e in train}.isdisjoint(e.id for e in eval)
    assert set(questions(train)).isdisjoint(questions(eval))
    assert len({e.id for e in train + eval}) == 1319
    assert eval == make_env(env_config(name="gsm8k", eval_size=200, seed=7)).eval_examples()
    assert eval != make_env(env_config(name="gsm8k", eval_size=200, seed=8)).eval_examples()


def test_gsm8k_train_cap_and_gold_answers():
    env = GSM8KEnv(env_config(name="gsm8k", eval_size=10, train_size=50))
    assert (len(env.train_examples()), len(env.eval_examples())) == (50, 10)
    full = GSM8KEnv(env_config(name="gsm8k", eval_size=1))
    by_id = {e.id: e for e in full.train_examples() + full.eval_examples()}
    assert by_id["gsm8k-test-0"].answer == "18"
    assert all("," not in e.answer for e in by_id.values())


def test_gsm8k_eval_size_must_leave_training_data():
    with pytest.raises(ConfigError, match="env.eval_size=1319"):
        GSM8KEnv(env_config(name="gsm8k", eval_size=1319))


def test_gsm8k_hub_offline_error_names_the_fix():
    code = ("from rltool.schemas import env_config\nfrom rltool.envs.gsm8k import GSM8KEnv\n"
            "GSM8KEnv(env_config(name='gsm8k', source='hub'))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "RuntimeError: env.source=hub" in out.stderr and "env.source=embedded" in out.stderr


def test_messages_use_system_prompt_and_instruction():
    env = ArithmeticEnv(env_config(name="arithmetic", eval_size=1, train_size=1, system_prompt="Be brief.",
                                  instruction="End with '#### N'."))
    q = env.eval_examples()[0].question
    assert env.messages(env.eval_examples()[0]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": q + "\n\nEnd with '#### N'."},
    ]
    plain = ArithmeticEnv(env_config(name="arithmetic", eval_size=1, train_size=1))
    assert [m["role"] for m in plain.messages(plain.eval_examples()[0])] == ["user"]


def test_arithmetic_problems_are_exact():
    env = ArithmeticEnv(env_config(name="arithmetic", digits=2, operators=["-", "*"], eval_size=50, train_size=500))
    for e in env.eval_examples() + env.train_examples():
        assert e.question.startswith("What is ") and e.question.endswith("?")
        a, op, b = e.question[len("What is "):-1].split(" ")
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99 and op in ("-", "*")
        assert e.answer == str(int(a) - int(b) if op == "-" else int(a) * int(b))


def test_arithmetic_deterministic_disjoint_and_independent_of_train_size():
    cfg = dict(name="arithmetic", digits=1, operators=["+"], eval_size=60)
    env = ArithmeticEnv(env_config(**cfg))  # 81 distinct problems: eval takes 60, train reuses the other 21
    train, eval = env.train_examples(), env.eval_examples()
    assert (len(train), len(eval)) == (10_000, 60)
    assert len(set(questions(eval))) == 60
    assert set(questions(train)).isdisjoint(questions(eval))
    assert len(set(questions(train))) == 21
    again = ArithmeticEnv(env_config(**cfg, train_size=5))
    assert again.eval_examples() == eval  # the held-out set does not move with train_size
    assert again.train_examples() == train[:5]
    assert ArithmeticEnv(env_config(**{**cfg, "seed": 1})).eval_examples() != eval


def test_arithmetic_eval_size_must_fit():
    with pytest.raises(ConfigError, match="env.eval_size=81"):
        ArithmeticEnv(env_config(name="arithmetic", digits=1, operators=["+"], eval_size=81))


def test_composition_interleaves_concatenates_and_routes():
    g = GSM8KEnv(env_config(name="gsm8k", eval_size=3, train_size=2, instruction="G"))
    a = ArithmeticEnv(env_config(name="arithmetic", eval_size=2, train_size=4, instruction="A"))
    env = ComposedEnv([g, a])
    assert isinstance(env, ComposedEnv) and env.name == "gsm8k+arithmetic"
    gt, at = g.train_examples(), a.train_examples()
    assert env.train_examples() == [gt[0], at[0], gt[1], at[1], at[2], at[3]]
    assert env.eval_examples() == g.eval_examples() + a.eval_examples()
    assert env.messages(gt[0])[-1]["content"].endswith("\n\nG")
    assert env.messages(at[0])[-1]["content"].endswith("\n\nA")
    with pytest.raises(ValueError, match="'arithmetic-train-0' appears in both"):
        ComposedEnv([env, ArithmeticEnv(env_config(name="arithmetic", eval_size=1, train_size=1))])


def test_mixing_weights_and_eval_only_parts():
    g = GSM8KEnv(env_config(name="gsm8k", eval_size=3, train_size=2))
    a = ArithmeticEnv(env_config(name="arithmetic", eval_size=2, train_size=4))
    gt, at = g.train_examples(), a.train_examples()
    # weights 3:1 -> 4 arithmetic examples need 4/3 "gsm8k units"... scale = max(2/1, 4/3) = 2: gsm8k 2, arithmetic 6
    mixed = ComposedEnv([g, a], mix=[1, 3]).train_examples()
    assert len(mixed) == 8 and sum(e in gt for e in mixed) == 2 and sum(e in at for e in mixed) == 6
    assert mixed[:4] == [at[0], gt[0], at[1], at[2]]  # smooth round robin: credit 3 vs 1 per round
    assert set(mixed) == set(gt) | set(at)  # nothing dropped; arithmetic's first two repeated
    only_eval = ComposedEnv([g, a], eval_only=["gsm8k"])
    assert only_eval.train_examples() == at and len(only_eval.eval_examples()) == 5


def test_make_env_composes_by_name_and_rejects_unknown():
    env = make_env(env_config(name="arithmetic+gsm8k", eval_size=5, train_size=5))
    assert env.name == "arithmetic+gsm8k" and len(env.eval_examples()) == 10
    with pytest.raises(ConfigError, match="env.name='gsm9k'.*valid: arithmetic, article_curriculum, collab, .*gsm8k"):
        make_env(env_config(name="gsm9k"))
    assert {"arithmetic", "gsm8k", "collab_arithmetic", "collab_gsm8k", "parallel_gsm8k"} <= set(ENVS.names())
