"""Stops a run that can no longer learn, in one line, after its work is saved.

Two things are tolerated for a while and then refused: a reward function that fails on most of a
step's samples (raises, times out, returns None or no number: those samples are unscored), and
updates skipped because the loss or gradient norm was not finite (rltool/train_backend.py `step`).
A few such steps are noise; many in a row mean the reward or the model is broken, and going on
would burn compute on zero-advantage or skipped steps. The decision reads the step's metrics after
they are combined over ranks, so every rank decides the same and none is left at a collective.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class RunAborted(RuntimeError):
    """The run stopped on purpose; the message is the one line the CLI prints (exit code 3).
    save: the model is sound and worth a checkpoint before exiting (a failing reward); False when
    the last good checkpoint must stay the newest (non-finite updates, a failed phase)."""

    def __init__(self, message: str, save: bool = False):
        super().__init__(message)
        self.save = save


@dataclass
class StepGuard:
    max_failure_frac: float = 0.5
    """A reward failing on more than this share of a step's samples counts that step as failed."""
    max_failed_steps: int = 3
    """That many failed steps in a row for one reward stop the run (0: never)."""
    max_nonfinite_steps: int = 3
    """That many steps in a row with a skipped non-finite update stop the run (0: never)."""
    streaks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg) -> "StepGuard":
        return cls(cfg.reward.max_failure_frac, cfg.reward.max_failed_steps, cfg.trainer.max_nonfinite_steps)

    def check(self, step: int, metrics: dict[str, float], errors: dict[str, str] | None = None) -> None:
        """After step `step`'s metrics are combined; raises RunAborted naming the cause.
        errors: reward name -> its latest reason, from every rank (Scorer.errors_over_ranks)."""
        for key, frac in metrics.items():
            if key.startswith("reward/failed_frac/"):
                name = key.rsplit("/", 1)[-1]
                self._count(f"reward:{name}", frac > self.max_failure_frac)
                if self.max_failed_steps and self.streaks[f"reward:{name}"] >= self.max_failed_steps:
                    last = (errors or {}).get(name, "see logs/rank<r>.log")
                    raise RunAborted(f"step {step}: reward {name!r} failed on more than {self.max_failure_frac:g} of "
                                     f"the samples for {self.max_failed_steps} steps in a row (reward.max_failed_steps); "
                                     f"last error: {last}", save=True)
        # any actor's update (<actor>/update/skipped_nonfinite in runs of several actors)
        skipped = any(v > 0 for k, v in metrics.items() if k.endswith("update/skipped_nonfinite"))
        self._count("nonfinite", skipped)
        if self.max_nonfinite_steps and self.streaks["nonfinite"] >= self.max_nonfinite_steps:
            raise RunAborted(f"step {step}: the loss or gradient norm was nan/inf for {self.max_nonfinite_steps} steps in "
                             "a row (updates skipped, weights untouched; trainer.max_nonfinite_steps); lower trainer.lr "
                             "or check the rewards")

    def _count(self, key: str, bad: bool) -> None:
        self.streaks[key] = self.streaks.get(key, 0) + 1 if bad else 0
