"""Procedural integer arithmetic: 'What is 47 * 23?' with operands of exactly `digits` digits.

A cheap, unlimited task for smoke tests and small models. Problems come from one stream seeded by
env.seed (not the run seed), so the eval set is the same in every run: the first eval_size
*distinct* problems are eval, and train is the next train_size problems, skipping any that are in
eval. Train may repeat a problem; eval never does.
"""
from __future__ import annotations

import random
from typing import Iterator

from dataclasses import dataclass, field

from rltool.config import EnvConfig, check, check_choice
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.gsm8k import NUMERIC_ANSWER_METRICS
from rltool.envs.single_turn import SingleTurnEnv

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
DEFAULT_TRAIN_SIZE = 10_000


def problems(digits: int, operators: list[str], seed: int) -> Iterator[tuple[str, str]]:
    """Endless (question, answer) stream; the same arguments always give the same stream."""
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    while True:
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(operators)
        yield f"What is {a} {op} {b}?", str(OPS[op](a, b))


@dataclass
class ArithmeticConfig(EnvConfig):
    """env=arithmetic's own keys."""

    operators: list[str] = field(default_factory=lambda: ["+", "-", "*"])
    """Operators drawn uniformly."""
    digits: int = 2
    """Operand digit count."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.digits <= 6, "env.digits", self.digits, "must be in 1..6")
        for op in self.operators:
            check_choice("env.operators", op, ["+", "-", "*"])


@register_env("arithmetic", config=ArithmeticConfig)
class ArithmeticEnv(SingleTurnEnv):
    name = "arithmetic"

    def __init__(self, cfg: ArithmeticConfig):
        n_operands = 9 * 10 ** (cfg.digits - 1)
        distinct = n_operands**2 * len(set(cfg.operators))
        # Otherwise the eval loop below, or the train loop's skipping, would never finish.
        check(cfg.eval_size < distinct, "env.eval_size", cfg.eval_size,
              f"must be < {distinct}, the number of distinct {cfg.digits}-digit problems")
        stream = problems(cfg.digits, cfg.operators, cfg.seed)
        eval: dict[str, str] = {}
        while len(eval) < cfg.eval_size:
            q, a = next(stream)
            eval.setdefault(q, a)
        train: list[tuple[str, str]] = []
        while len(train) < (cfg.train_size or DEFAULT_TRAIN_SIZE):
            q, a = next(stream)
            if q not in eval:
                train.append((q, a))
        super().__init__(
            cfg,
            train=[Example(f"arithmetic-train-{i}", q, a) for i, (q, a) in enumerate(train)],
            eval=[Example(f"arithmetic-eval-{i}", q, a) for i, (q, a) in enumerate(eval.items())],
        )

    def eval_metrics(self) -> dict[str, str]:
        return NUMERIC_ANSWER_METRICS
