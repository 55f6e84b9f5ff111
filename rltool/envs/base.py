"""The environment protocol: what the actor sees and how its answer is judged.

Today's environments are single-turn: one prompt, one completion, one score. Multi-turn and
multi-actor environments (the round-spec DSL) will add `step()`; the rollout functions are the
only callers, so they can grow without touching the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str
    """Gold final answer as a string (e.g. '42')."""
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Env(Protocol):
    name: str

    def train_examples(self) -> list[Example]: ...

    def eval_examples(self) -> list[Example]: ...

    def messages(self, example: Example) -> list[dict]:
        """Chat messages for the policy: [{'role': 'system'|'user', 'content': str}, ...]."""
        ...
