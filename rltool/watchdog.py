"""A deadline on a phase that can hang (vLLM `generate`, eval), and one line when a phase fails.

A hung engine call sits in C++ or waits on a lock; Python cannot interrupt it. So past the deadline
a timer thread prints one line naming the phase and the step, kills this process's children
(reward workers) and exits with code 3: the last checkpoint is untouched, because nothing is
written after a checkpoint's commit except by the next save. An exception inside the phase becomes
RunAborted (one line on the console, exit 3) with its traceback in the rank's log file.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from rltool.config import ConfigError
from rltool.guard import RunAborted

EXIT_STOPPED = 3

_last_words: list[Callable[[str], None]] = []


def on_expire(tell: Callable[[str], None]) -> None:
    """`tell(reason)` runs just before an expired deadline ends this process: a sweep job runs in a child
    process and tells its parent why it died, so the sweep records the job as failed and goes on."""
    _last_words.append(tell)


def _expire(phase: str, step: int, timeout_s: float, key: str) -> None:
    reason = f"{'' if step is None else f'step {step}: '}{phase} did not finish within {timeout_s:g} s ({key})"
    line = f"rltool: stopped: {reason}; exiting"
    print(line, file=sys.stdout, flush=True)  # stdout stays the console while stderr goes to the log file
    logging.getLogger(__name__).error(line)
    for tell in _last_words:
        tell(reason)
    kill_children()
    os._exit(EXIT_STOPPED)  # not sys.exit: the main thread is stuck and would never see an exception


def kill_children() -> None:
    """SIGKILL every process this one started (reward workers, helpers); they are stuck or orphaned."""
    try:
        import psutil
    except ImportError:  # multiprocessing's own list: the reward workers
        import multiprocessing as mp

        for p in mp.active_children():
            p.kill()
        return
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    # SIGKILL is delivered asynchronously: wait until they are gone, so none outlives this process's exit
    psutil.wait_procs(children, timeout=5)


class _Clock:
    """One open deadline. Only the innermost on a thread runs: the enclosing phase's clock stops while
    a phase inside it has its own (reward scoring inside generate), and goes on with what it had left."""

    def __init__(self, phase: str, step: Optional[int], timeout_s: float, key: str):
        self.args, self.left, self.timer = (phase, step, timeout_s, key), timeout_s, None
        self.limited = bool(timeout_s and timeout_s > 0)  # <= 0: no deadline

    def run(self) -> None:
        if self.limited:
            self.since = time.monotonic()
            self.timer = threading.Timer(max(self.left, 0.0), _expire, args=self.args)
            self.timer.daemon = True
            self.timer.start()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer, self.left = None, self.left - (time.monotonic() - self.since)


_open = threading.local()


@contextmanager
def clock(phase: str, step: Optional[int], timeout_s: float, key: str) -> Iterator[None]:
    """The deadline alone (no error handling); step None: the enclosing phase's step."""
    stack = _open.__dict__.setdefault("clocks", [])
    outer = stack[-1] if stack else None
    if outer is not None:
        outer.stop()
        step = outer.args[1] if step is None else step
    mine = _Clock(phase, step, timeout_s, key)
    stack.append(mine)
    mine.run()
    try:
        yield
    finally:
        mine.stop()
        stack.pop()
        if outer is not None:
            outer.run()


@contextmanager
def deadline(phase: str, step: int, timeout_s: float, key: str = "rollout.timeout_s") -> Iterator[None]:
    """`with deadline("generate", step, cfg.rollout.timeout_s): ...`; timeout_s <= 0: no deadline.
    A deadline opened inside another stops the other's clock meanwhile (see `clock`)."""
    with clock(phase, step, timeout_s, key):
        try:
            yield
        except (RunAborted, ConfigError, KeyboardInterrupt):
            raise
        except Exception as e:
            logging.getLogger(__name__).exception("step %d: %s failed", step, phase)
            first = (str(e).splitlines() or [""])[0]
            raise RunAborted(f"step {step}: {phase} raised {type(e).__name__}: {first} "
                             "(traceback in logs/rank<r>.log)") from e
