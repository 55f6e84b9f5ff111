"""Shared behaviour of one-prompt, one-completion environments: example lists held as given, and the
standard chat prompt (optional system prompt, then question + instruction). Every other hook is
`Env`'s single-turn default (base.py). Subclasses only build their example lists.
"""
from __future__ import annotations

from rltool.config import EnvConfig
from rltool.envs.base import Env, Example


class SingleTurnEnv(Env):
    def __init__(self, cfg: EnvConfig, train: list[Example], eval: list[Example]):
        self.cfg = cfg
        self._train = train
        self._eval = eval

    def train_examples(self) -> list[Example]:
        return self._train

    def eval_examples(self) -> list[Example]:
        return self._eval

    def messages(self, example: Example) -> list[dict]:
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        user = example.question + "\n\n" + self.cfg.instruction if self.cfg.instruction else example.question
        return system + [{"role": "user", "content": user}]
