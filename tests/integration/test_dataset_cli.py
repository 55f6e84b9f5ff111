"""env=dataset through the CLI: a user's file and reward train a base model (no chat template) one step;
bad data is one line at `rltool validate`, before any model loads."""
import json
import math
import os

import pytest

from rltool.actors.embedded import materialize
from tests.integration.helpers import read_jsonl, rltool

WORDS = ["apple", "river", "stone", "cloud", "green", "table", "music", "light", "paper", "water", "horse", "glass"]
REWARD = '''
from rltool.rewards import reward

@reward("says_word")
def says_word(completion, word):  # `word` is a column of the user's data
    return float(word in completion.lower())
'''


def user_task(tmp_path):
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Repeat the word {w}:", "word": w}) + "\n" for w in WORDS))
    module = tmp_path / "my_reward.py"
    module.write_text(REWARD)
    return data, module, [f"env.path={data}", f"reward.module={module}", "reward.success=says_word",
                          "reward.terms=[{name: says_word}]", "env.eval_size=4"]


def base_model(tmp_path):
    """The embedded model as a base model ships: the same weights, no chat template."""
    src, out = materialize("smollm2-135m-instruct"), tmp_path / "base"
    out.mkdir()
    for f in os.listdir(src):
        if f != "chat_template.jinja":
            os.symlink(src / f, out / f)
    return out


@pytest.mark.slow
def test_user_data_and_reward_train_a_base_model_one_step(tmp_path):
    _, _, task = user_task(tmp_path)
    run = tmp_path / "run"
    rltool("train", "env=dataset", *task, f"actors.path={base_model(tmp_path)}", "rollout.engine=hf", "hardware=cpu",
           "trainer.prompts_per_step=2", "trainer.group_size=4", "trainer.micro_batch_size=4", "trainer.max_steps=1",
           "rollout.max_new_tokens=8", "eval.max_new_tokens=8", "eval.size=4", "trainer.save_every=0",
           "reward.length_penalty=0.5", f"hydra.run.dir={run}")
    (row,) = [r for r in read_jsonl(run / "metrics.jsonl") if "loss/policy" in r]
    assert math.isfinite(row["loss/policy"]) and 0 <= row["reward/says_word"] <= 1  # the column reached the reward
    assert row["rollout/samples"] == 8


@pytest.mark.parametrize("setup, overrides, message", [
    (lambda p: None, ["env.path={tmp}/missing.jsonl"], "env.path='{tmp}/missing.jsonl': no such file or directory"),
    (lambda p: (p / "q.csv").write_text("question,word\nhi,apple\n"), ["env.path={tmp}/q.csv"],
     "env.path='{tmp}/q.csv': no 'prompt' column; its columns: question, word (map yours with +env.rename.question=prompt)"),
    (lambda p: None, ["env.eval_size=12"], "env.eval_size=12: must be < 12 (the rows of env.path)"),
    (lambda p: None, ["+env.rename.word=label"], "reward 'says_word' (says_word in my_reward.py:4): parameter 'word' "
                                                 "cannot be filled from the row; available: answer, completion, example, "
                                                 "id, label, prompt, question"),
])
def test_bad_data_is_one_line_at_validate(tmp_path, setup, overrides, message):
    _, _, task = user_task(tmp_path)
    setup(tmp_path)
    proc = rltool("validate", "env=dataset", *task, *(o.format(tmp=tmp_path) for o in overrides), check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rltool: config error: "), proc.stderr
    assert message.format(tmp=tmp_path) in lines[0], lines[0]
