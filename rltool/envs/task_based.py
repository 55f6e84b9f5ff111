"""Environments that play a single-turn task's problems in another way (a conversation, drafts +
combiner): the task's examples under the environment's own id prefix, and its prompt."""
from __future__ import annotations

from dataclasses import dataclass, field

from rltool.config import ConfigError, EnvConfig
from rltool.envs import ENVS
from rltool.envs.base import Env, Example


@dataclass
class TaskConfig(EnvConfig):
    """The keys of an environment that plays another one's problems; its config also holds the task's keys
    (rltool/schemas.py), e.g. env.digits for a collab_arithmetic run."""

    task: str = "arithmetic"
    """The single-turn environment whose problems it plays (env=collab / env=parallel; the named variants fix it)."""
    system_prompts: dict[str, str] = field(default_factory=dict)
    """Actor name -> Jinja2 system prompt over the problem ({{ question }}, {{ name }}, {{ actors }}, {{ meta }});
    the gold answer is not offered."""


class OnTask(Env):
    """`name`'s examples are `task`'s, ids prefixed with `name` (so `env=gsm8k+collab_gsm8k` keeps them
    apart); the prompt alone is the task's."""

    TASK: str | None = None
    """The task this environment always plays (collab_gsm8k: gsm8k); None: the one env.task names."""

    @classmethod
    def task_name(cls, cfg: TaskConfig) -> str:
        return cls.TASK or cfg.task

    @classmethod
    def check(cls, cfg: TaskConfig) -> None:
        """Before any model loads: the task is a registered single-turn environment, and its own check passes
        (env.task=dataset reads the data here)."""
        task = cls.task_name(cfg)
        if task not in ENVS or ENVS[task].episodes != "single_turn":
            single = [n for n in ENVS.names() if ENVS[n].episodes == "single_turn"]
            raise ConfigError(f"env.task={task!r}: must be a single-turn environment; valid: {', '.join(single)}")
        ENVS[task].check(cfg)

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.check(cfg)
        self.task = ENVS[self.task_name(cfg)](cfg)
        name = self.name
        relabel = lambda exs: [Example(f"{name}-{e.id}", e.question, e.answer, e.meta) for e in exs]  # noqa: E731
        self._train, self._eval = relabel(self.task.train_examples()), relabel(self.task.eval_examples())

    def train_examples(self) -> list[Example]:
        return self._train

    def eval_examples(self) -> list[Example]:
        return self._eval

    def messages(self, example: Example) -> list[dict]:
        """The task as one actor alone sees it (prompt-length checks use this)."""
        return self.task.messages(example)

    def eval_metrics(self) -> dict[str, str]:
        """The task's own held-out measures (rltool/evaluate.py), e.g. gsm8k's accuracies."""
        return self.task.eval_metrics()
