"""env=dataset: the user's own file, in every format `datasets` reads, checked before any model loads."""
import json

import pytest
from transformers import AutoTokenizer

from rltool.actors.embedded import resolve_model_path
from rltool.config import ConfigError
from rltool.envs import make_env, validate_env_config
from rltool.schemas import env_config
from rltool.rewards.registry import Reward
from rltool.rewards.score import env_columns
from rltool.engines.prompts import encode_chat

ROWS = [{"prompt": f"Say {i}", "answer": str(i), "label": f"L{i}"} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write(tmp_path, fmt, rows=ROWS):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / f"data.{fmt}" if fmt != "disk" else tmp_path / "data_dir"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        ds.to_csv(str(path), index=False)
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


def cfg(path, **kw):
    return env_config(name="dataset", path=str(path), eval_size=kw.pop("eval_size", 3), instruction="", **kw)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "disk"])
def test_every_format_gives_the_same_examples(tmp_path, fmt):
    env = make_env(cfg(write(tmp_path, fmt)))
    train, held_out = env.train_examples(), env.eval_examples()
    assert len(train) == 7 and len(held_out) == 3
    everything = sorted(train + held_out, key=lambda e: int(e.answer))
    assert [e.question for e in everything] == [f"Say {i}" for i in range(10)]
    assert [e.meta["label"] for e in everything] == [f"L{i}" for i in range(10)]  # extra columns travel in meta
    assert env.messages(everything[4]) == [{"role": "user", "content": "Say 4"}]


def test_held_out_rows_are_fixed_by_the_seed_and_never_trained_on(tmp_path):
    path = write(tmp_path, "jsonl")
    a, b = make_env(cfg(path, seed=1)), make_env(cfg(path, seed=1))
    assert [e.id for e in a.eval_examples()] == [e.id for e in b.eval_examples()]
    assert not {e.id for e in a.eval_examples()} & {e.id for e in a.train_examples()}
    other = make_env(cfg(path, seed=2))
    assert [e.id for e in other.eval_examples()] != [e.id for e in a.eval_examples()]
    assert len(make_env(cfg(path, train_size=4)).train_examples()) == 4


def test_eval_path_is_the_held_out_set(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS[:6])
    held = write_jsonl(tmp_path / "test.jsonl", ROWS[6:])
    env = make_env(cfg(train, eval_path=str(held), eval_size=100))
    assert sorted(e.question for e in env.train_examples()) == [f"Say {i}" for i in range(6)]
    assert sorted(e.question for e in env.eval_examples()) == [f"Say {i}" for i in range(6, 10)]


def test_message_prompts_rename_and_system_prompt(tmp_path):
    rows = [{"problem": [{"role": "user", "content": f"Q{i}"}], "solution": i} for i in range(5)]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    env = make_env(cfg(path, eval_size=1, rename={"problem": "prompt", "solution": "answer"}, system_prompt="Be brief."))
    e = min(env.train_examples() + env.eval_examples(), key=lambda e: e.answer)
    assert e.answer == "0" and e.question == "Q0"
    assert env.messages(e) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q0"}]


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "nope.jsonl", "env.path='{path}': no such file or directory"),
    (lambda p: write_jsonl(p / "data.txt", ROWS), "env.path='{path}': cannot read .txt files; use .jsonl, .json, "
                                                   ".csv, .parquet or a `datasets` save_to_disk directory"),
    (lambda p: (p / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n') and p / "bad.jsonl",
     "env.path='{path}': unreadable as .jsonl ("),
    (lambda p: write_jsonl(p / "q.jsonl", [{"question": "a", "answer": "1"}]),
     "env.path='{path}': no 'prompt' column; its columns: question, answer (map yours with +env.rename.question=prompt)"),
    (lambda p: write_jsonl(p / "null.jsonl", [{"prompt": "a"}, {"prompt": None}, {"prompt": "c"}]),
     "env.path='{path}': row 1 (counting from 0): prompt must be a string or a list of {{role, content}} messages, got None"),
    (lambda p: write_jsonl(p / "msg.jsonl", [{"prompt": [{"role": "user"}]}]),
     "env.path='{path}': row 0 (counting from 0): prompt must be a string or a list of {{role, content}} messages"),
    (lambda p: write_jsonl(p / "small.jsonl", ROWS), "env.eval_size=10: must be < 10 (the rows of env.path) to leave "
                                                     "some for training; lower it or give env.eval_path"),
])
def test_bad_data_is_one_line_before_any_model(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(ConfigError) as e:
        validate_env_config(cfg(path, eval_size=10))
    assert str(e.value) == message.format(path=path) or str(e.value).startswith(message.format(path=path)), str(e.value)
    assert "\n" not in str(e.value)


def test_rename_of_a_column_the_data_lacks(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ConfigError, match=r"env.rename: no column 'problem' in env.path='.*'; its columns: "
                                          r"prompt, answer, label"):
        validate_env_config(cfg(path, rename={"problem": "prompt"}))


def label_match(completion, label):
    return float(completion.strip() == label)


def test_a_reward_parameter_naming_a_column_validates(tmp_path):
    """Checked as validate_reward_config checks each reward (not registered here: other tests walk the registry;
    tests/integration/test_dataset_cli.py goes through `rltool validate` with a reward.module)."""
    label = Reward.of("label_match", label_match)
    label.check(env_columns(cfg(write(tmp_path, "csv"))))
    no_label = write_jsonl(tmp_path / "nolabel.jsonl", [{"prompt": "a", "tag": "x"}] * 5)
    with pytest.raises(ConfigError, match=r"parameter 'label' cannot be filled from the row; available: .*tag"):
        label.check(env_columns(cfg(no_label, eval_size=1)))


@pytest.fixture(scope="module")
def base_tokenizer():
    """The embedded model's tokenizer with its chat template removed: what a base model ships."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded:smollm2-135m-instruct"))
    tok.chat_template = None
    return tok


def test_base_model_without_chat_template_gets_plain_text(base_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2="}]
    ids = encode_chat(base_tokenizer, messages)
    assert base_tokenizer.decode(ids) == "Be brief.\n\n2+2="
    assert encode_chat(base_tokenizer, [{"role": "user", "content": "2+2="}]) == base_tokenizer("2+2=")["input_ids"]
