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


def task_env(cfg: EnvConfig, task: str):
    """The single-turn environment whose problems a collaborative or parallel one plays."""
    if task not in ENVS or ENVS[task].episodes != "single_turn":
        raise ConfigError(f"env.task={task!r}: must be a single-turn environment, e.g. arithmetic or gsm8k")
    return ENVS[task](cfg)


class OnTask(Env):
    """`name`'s examples are `task`'s, ids prefixed with `name` (so `env=gsm8k+collab_gsm8k` keeps them
    apart); the prompt alone is the task's."""

    TASK: str | None = None
    """The task this environment always plays (collab_gsm8k: gsm8k); None: the one env.task names."""

    def __init__(self, cfg: EnvConfig, name: str, task: str):
        self.cfg, self.name = cfg, name
        self.task = task_env(cfg, task)
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
