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
from contextlib import contextmanager
from typing import Iterator

from rltool.config import ConfigError
from rltool.guard import RunAborted

EXIT_STOPPED = 3


def _expire(phase: str, step: int, timeout_s: float, key: str) -> None:
    line = f"rltool: stopped: step {step}: {phase} did not finish within {timeout_s:g} s ({key}); exiting"
    print(line, file=sys.stdout, flush=True)  # stdout stays the console while stderr goes to the log file
    logging.getLogger(__name__).error(line)
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
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@contextmanager
def deadline(phase: str, step: int, timeout_s: float, key: str = "rollout.timeout_s") -> Iterator[None]:
    """`with deadline("generate", step, cfg.rollout.timeout_s): ...`; timeout_s <= 0: no deadline."""
    timer = None
    if timeout_s and timeout_s > 0:
        timer = threading.Timer(timeout_s, _expire, args=(phase, step, timeout_s, key))
        timer.daemon = True
        timer.start()
    try:
        yield
    except (RunAborted, ConfigError, KeyboardInterrupt):
        raise
    except Exception as e:
        logging.getLogger(__name__).exception("step %d: %s failed", step, phase)
        first = (str(e).splitlines() or [""])[0]
        raise RunAborted(f"step {step}: {phase} raised {type(e).__name__}: {first} (traceback in logs/rank<r>.log)") from e
    finally:
        if timer is not None:
            timer.cancel()
