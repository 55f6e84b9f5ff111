"""env=dataset: the user's own prompts, in TRL's prompt format.

`env.path` is a .jsonl / .json / .csv / .parquet file or a `datasets` save_to_disk directory, read
with the `datasets` library. Its `prompt` column holds a string or a list of {role, content}
messages; `answer` (if any) becomes Example.answer, `id` Example.id, and every other column travels
in Example.meta, so a reward takes it by name. `env.rename` maps columns named otherwise
(`+env.rename.question=prompt`).
Held out: `env.eval_path`, else `env.eval_size` rows chosen with `env.seed`.

Every check on the data runs in `check(cfg)`, which `rltool validate` calls before any model loads,
so a bad file is one line naming the file and the row or column, never a traceback mid-run.
"""
from __future__ import annotations

import os
from functools import lru_cache

from dataclasses import dataclass, field

from rltool.config import ConfigError, EnvConfig
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.gsm8k import cap, shuffled
from rltool.envs.single_turn import SingleTurnEnv

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File suffix -> the `datasets` builder that reads it."""
FIELDS = ("id", "prompt", "answer")
"""Columns that become Example's own fields; the rest go to Example.meta."""


@dataclass
class DatasetConfig(EnvConfig):
    """env=dataset's own keys: where your data is and what its columns are called."""

    path: str = ""
    """Your data: a .jsonl / .json / .csv / .parquet file or a `datasets` save_to_disk directory, with a `prompt`
    column (a string or a list of {role, content} messages); other columns reach rewards by name."""
    eval_path: str = ""
    """A held-out file in the same format ("" = hold out env.eval_size rows of env.path, chosen with env.seed)."""
    rename: dict[str, str] = field(default_factory=dict)
    """Column renames applied on reading, your name -> rltool's (`+env.rename.question=prompt`)."""


def check(cfg: DatasetConfig) -> None:
    """ConfigError naming the first problem with env.path / env.eval_path (reads them, builds nothing else)."""
    if not cfg.path:
        raise ConfigError("env.path: required with env=dataset; a .jsonl, .json, .csv or .parquet file, or a "
                          "`datasets` save_to_disk directory, with a `prompt` column")
    rows = load_rows(cfg.path, "env.path", tuple(cfg.rename.items()))
    if cfg.eval_path:
        load_rows(cfg.eval_path, "env.eval_path", tuple(cfg.rename.items()))
    elif cfg.eval_size >= len(rows):
        raise ConfigError(f"env.eval_size={cfg.eval_size}: must be < {len(rows)} (the rows of env.path) to leave some "
                          "for training; lower it or give env.eval_path")


@lru_cache(maxsize=8)
def load_rows(path: str, key: str, rename: tuple[tuple[str, str], ...]) -> tuple[dict, ...]:
    """The file's rows as dicts, renamed and checked; cached, since validation and the env both read it."""
    table = read_table(path, key)
    columns = list(table.column_names)
    for old, _ in rename:
        if old not in columns:
            raise ConfigError(f"env.rename: no column {old!r} in {key}={path!r}; its columns: {', '.join(columns)}")
    table = table.rename_columns(dict(rename)) if rename else table
    if "prompt" not in table.column_names:
        hint = next((c for c in columns if c in ("question", "problem", "query", "input", "instruction")), columns[0])
        raise ConfigError(f"{key}={path!r}: no 'prompt' column; its columns: {', '.join(columns)} "
                          f"(map yours with +env.rename.{hint}=prompt)")
    rows = tuple(table.to_list())
    if not rows:
        raise ConfigError(f"{key}={path!r}: has no rows")
    for i, row in enumerate(rows):
        if not is_prompt(row["prompt"]):
            raise ConfigError(f"{key}={path!r}: row {i} (counting from 0): prompt must be a string or a list of "
                              f"{{role, content}} messages, got {describe(row['prompt'])}")
    return rows


def read_table(path: str, key: str):
    """A `datasets.Dataset` from a file or a save_to_disk directory; one ConfigError line if it cannot be read."""
    import datasets  # ~1 s import, only for this env

    if not os.path.exists(path):
        raise ConfigError(f"{key}={path!r}: no such file or directory")
    suffix = os.path.splitext(path)[1].lower()
    if not os.path.isdir(path) and suffix not in FORMATS:
        raise ConfigError(f"{key}={path!r}: cannot read {suffix or 'suffix-less'} files; use .jsonl, .json, .csv, "
                          ".parquet or a `datasets` save_to_disk directory")
    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()  # `rltool validate` prints the config, not "Generating train split",
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # and a bad file is our one line, not theirs too
    try:
        if os.path.isdir(path):
            table = datasets.load_from_disk(path)
            if isinstance(table, datasets.DatasetDict):
                raise ConfigError(f"{key}={path!r}: holds splits ({', '.join(table)}); give one split's directory")
            return table
        return datasets.load_dataset(FORMATS[suffix], data_files=path, split="train")
    except ConfigError:
        raise
    except Exception as e:  # the user's file: its error becomes one line naming it, and the run does not start
        first = (str(e).splitlines() or [""])[0]
        cause = e.__cause__ or e.__context__
        detail = f"{type(e).__name__}: {first}" + (f"; {type(cause).__name__}: {str(cause).splitlines()[0]}"
                                                    if cause is not None and str(cause) else "")
        raise ConfigError(f"{key}={path!r}: unreadable as {suffix or 'a datasets directory'} ({detail})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def describe(value) -> str:
    if isinstance(value, list):
        return "a list whose items are not all {role, content} strings" if value else "an empty list"
    return "None" if value is None else type(value).__name__


def is_prompt(value) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def to_example(row: dict, split: str, index: int) -> Example:
    prompt = row["prompt"]
    if isinstance(prompt, list):  # keep only role and content: datasets fills other keys of other rows with None
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    users = [m["content"] for m in prompt if m["role"] == "user"] if isinstance(prompt, list) else [prompt]
    meta = {k: v for k, v in row.items() if k not in FIELDS}
    meta["prompt"] = prompt
    answer = row.get("answer")
    return Example(id=str(row["id"]) if row.get("id") is not None else f"dataset-{split}-{index}",
                   question=users[-1] if users else prompt[-1]["content"],
                   answer="" if answer is None else str(answer), meta=meta)


@register_env("dataset", config=DatasetConfig)
class DatasetEnv(SingleTurnEnv):
    name = "dataset"
    check = staticmethod(check)

    @classmethod
    def columns(cls, cfg: DatasetConfig) -> tuple[str, ...]:
        """The data's columns (after env.rename), which rewards may name; the data is checked first."""
        check(cfg)
        return tuple(load_rows(cfg.path, "env.path", tuple(cfg.rename.items()))[0])

    def __init__(self, cfg: DatasetConfig):
        check(cfg)
        rename = tuple(cfg.rename.items())
        rows = load_rows(cfg.path, "env.path", rename)
        order = shuffled(len(rows), cfg.seed)
        if cfg.eval_path:
            eval_rows = load_rows(cfg.eval_path, "env.eval_path", rename)
            held_out = [to_example(eval_rows[i], "eval", i) for i in shuffled(len(eval_rows), cfg.seed)[:cfg.eval_size]]
            train_idx = order
        else:
            held_out = [to_example(rows[i], "train", i) for i in order[:cfg.eval_size]]
            train_idx = order[cfg.eval_size:]
        super().__init__(cfg, [to_example(rows[i], "train", i) for i in cap(train_idx, cfg.train_size)], held_out)

    def messages(self, example: Example) -> list[dict]:
        """A string prompt reads as one user turn (plus env.system_prompt, env.instruction); a message list as
        written, after env.system_prompt unless it has its own system message."""
        prompt = example.meta["prompt"]
        if isinstance(prompt, str):
            return super().messages(example)
        own_system = any(m["role"] == "system" for m in prompt)
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt and not own_system else []
        return system + [dict(m) for m in prompt]
