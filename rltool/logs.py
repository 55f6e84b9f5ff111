"""The console shows rltool's own lines; everything else goes to `<run_dir>/logs/rank<r>.log`.

A default run would otherwise print ~40 lines of vLLM INFO/WARNING before the first step and the same
warnings after every weight sync ("RotaryEmbedding: Failed to load weights" is harmless). While
`routed_logs` is active:

- Python logging: a handler on the root logger writes every record (INFO and up) to the rank's log
  file; console handlers (Hydra's on the root, DeepSpeed's own) are taken off, and vLLM is told not
  to install its own (VLLM_CONFIGURE_LOGGING=0, read when vLLM is imported), so its loggers
  propagate to the file. Python warnings become log records (`logging.captureWarnings`).
- stderr, at the file-descriptor level: library progress bars, C++ warnings (torch's `[W ...]`)
  and anything else written to stderr go to the same file. stdout stays the console: the plan,
  the progress bar or per-step line, eval results and rltool's warnings are printed there.

`rltool train -v` (or `hydra.verbose=...`) leaves the console as it was and still writes the file.
A crash's traceback is printed after the block has put stderr back, so it reaches the console.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"
OWN_CONSOLE_LOGGERS = ("DeepSpeed",)
"""Loggers that add their own stdout handler when their library is imported (DeepSpeed is imported by
`save_pretrained`, mid-run): a filter on them, in place before the import, sends their records to the file."""


class _ToFile(logging.Filter):
    """On a logger: hand each record to the file handler and drop it from the logger's own handlers."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            self.handler.handle(record)
        return False


def _is_console(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def adopt_library_loggers() -> None:
    """Loggers that libraries gave their own console handler at import (DeepSpeed's "DeepSpeed" writes to
    stdout, transformers' to stderr) lose it and propagate to the root's file handler instead. Cheap:
    call it again after a library is imported (vLLM, DeepSpeed are imported during setup)."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not name.startswith("rltool"):
            consoles = [h for h in logger.handlers if _is_console(h)]
            for h in consoles:
                logger.removeHandler(h)
            if consoles:
                logger.propagate = True


@contextmanager
def routed_logs(run_dir: str | Path, rank: int, verbose: bool = False) -> Iterator[Path]:
    """Route library logs to run_dir/logs/rank<rank>.log for the block; yields the file's path."""
    path = Path(run_dir) / "logs" / f"rank{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(path, "a", buffering=1)
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    saved_level, removed = root.level, []
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    saved_fd = None
    if not verbose:
        removed = [h for h in root.handlers if _is_console(h)]
        for h in removed:
            root.removeHandler(h)
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        logging.captureWarnings(True)
        adopt_library_loggers()
        to_file = _ToFile(handler)
        for name in OWN_CONSOLE_LOGGERS:
            logging.getLogger(name).addFilter(to_file)
        sys.stderr.flush()
        saved_fd, saved_stderr = os.dup(2), sys.stderr
        os.dup2(log_file.fileno(), 2)  # C-level writes, and Python objects that hold the original sys.stderr
        sys.stderr = log_file  # what looks sys.stderr up when it writes (tqdm, warnings)
    try:
        yield path
    finally:
        if saved_fd is not None:
            sys.stderr = saved_stderr
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            logging.captureWarnings(False)
            for name in OWN_CONSOLE_LOGGERS:
                logging.getLogger(name).removeFilter(to_file)
        root.removeHandler(handler)
        for h in removed:
            root.addHandler(h)
        root.setLevel(saved_level)
        log_file.close()


TALLIED = {  # step metrics that count something worth a warning -> what the count means
    "reward/unscored": "completions could not be scored (reward None: left out of their group's baseline)",
    "erl/prompt_truncated": "ERL reflection prompts were shortened to fit rollout.max_prompt_len",
    "update/skipped_nonfinite": "updates skipped: loss or gradient norm not finite (weights untouched)",
}


class Tally:
    """Warnings that can happen every step (TALLIED metrics, and `reward/failed/<name>` with the reward's
    reason), printed once with a count when they first happen and once more at the end with the total,
    instead of once per step. Fed the step's metrics combined over ranks: rank 0 says what any rank saw."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.counts: dict[str, tuple[float, int]] = {}  # message -> (total, steps it happened in)
        self.messages: dict[str, str] = {}  # key -> the message it was first said with

    def add_metrics(self, step: int, metrics: dict[str, float], reasons: dict[str, str] | None = None) -> None:
        """reasons: reward name -> why it left samples unscored (Scorer.errors_over_ranks)."""
        for key, message in TALLIED.items():
            self.add(step, metrics.get(key, 0.0), message)
        for key, count in metrics.items():
            if key.startswith("reward/failed/") and count:
                name = key.removeprefix("reward/failed/")
                why = (reasons or {}).get(name, "see logs/rank<r>.log")
                self.add(step, count, f"completions unscored by reward {name!r} ({why}; counted in {key})", key=key)

    def add(self, step: int, count: float, message: str, key: str | None = None) -> None:
        """`message` reads after a number: "completions could not be scored (reward None)"; key: what
        counts as the same warning (default: the message), said with its first message."""
        if not count:
            return
        message = self.messages.setdefault(key or message, message)
        total, steps = self.counts.get(message, (0.0, 0))
        if not steps and self.enabled:
            print(f"warning: step {step}: {count:g} {message} (printed once; the total comes at the end)")
        self.counts[message] = (total + count, steps + 1)

    def summary(self, total_steps: int) -> None:
        for message, (total, steps) in self.counts.items():
            if self.enabled:
                print(f"warning: {total:g} {message}, in {steps} of {total_steps} steps")
