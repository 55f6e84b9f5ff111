"""The prompt sampler: a seeded, resumable stream of training examples."""
from __future__ import annotations

import random

from rltool.envs.base import Example


class PromptSampler:
    """Shuffles the training set each epoch with Random(seed + epoch); `(epoch, index)` is the position.

    The order depends only on the seed and the position, so a resumed run sees the same prompts
    an uninterrupted run would have.
    """

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.seed = examples, seed
        self.epoch, self.index = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def draw(self, k: int) -> list[Example]:
        out = []
        for _ in range(k):
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.examples[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffle()
