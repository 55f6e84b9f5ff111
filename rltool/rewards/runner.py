"""Calls reward functions so that one bad sample cannot end or hang a run.

A reward that raises, or runs past `reward.timeout_s`, leaves that call's samples unscored (None:
out of their group's baseline) and the error is kept for the run's one-line warning, instead of a
traceback that loses every step since the last checkpoint. Two ways to run:

- `workers=0` (default): in this process. The deadline is a SIGALRM timer, so it interrupts Python
  code and sleeps, but not a C extension that never returns to the interpreter. Off the main
  thread (no signals there) the call runs in a daemon thread that is abandoned when it overruns.
- `workers=N`: N spawned worker processes (they import rltool.rewards and reward.module, never
  torch, so they know the shipped rewards and reward.module's, not ones registered at run time by
  other code); a worker that overruns is killed and replaced, so nothing can hang. Costs a pickle
  of each row and ~0.3 s per worker at start-up.

A `ConfigError` (a reward returning a string, a parameter no row can fill) is a bug in the reward's
contract, not a bad sample: it is raised, not swallowed.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from typing import Optional, Sequence

from rltool.config import ConfigError
from rltool.rewards.registry import REWARDS, Reward, Row, load_reward_module

Result = list[tuple[Optional[float], str]]
"""(value, feedback) per row, as Reward.score returns."""


class RewardTimeout(BaseException):
    """Raised by the SIGALRM handler inside the reward: a BaseException, so neither Reward.run's
    wrapper nor a reward's own `except Exception` turns the deadline into an ordinary error."""


def describe(e: BaseException) -> str:
    """'ValueError: bad' with the wrapping RuntimeError of Reward.run taken off."""
    inner = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
    return f"{type(inner).__name__}: {(str(inner).splitlines() or [''])[0]}"


class RewardRunner:
    """`runner.call(reward, rows) -> (Result, failed rows, last error)`; a failed row is (None, "")."""

    def __init__(self, timeout_s: float = 60.0, workers: int = 0, module: Optional[str] = None):
        self.timeout_s = float(timeout_s)
        self.pool = _Pool(workers, module) if workers > 0 else None

    def call(self, r: Reward, rows: Sequence[Row]) -> tuple[Result, int, Optional[str]]:
        # one call per row for a per-completion reward (so one bad row fails alone), one for a batched one
        jobs = [list(rows)] if r.batched else [[row] for row in rows]
        if self.pool is not None:
            out = self.pool.call(r.name, jobs, self.timeout_s)
        else:
            out = [self._in_process(r, job) for job in jobs]
        result: Result = []
        failed, error = 0, None
        for job, (res, err) in zip(jobs, out):
            if res is None:
                result += [(None, "")] * len(job)
                failed, error = failed + len(job), err
            else:
                result += res
        return result, failed, error

    def _in_process(self, r: Reward, job: list[Row]) -> tuple[Optional[Result], Optional[str]]:
        try:
            return _with_deadline(lambda: r.score(job), self.timeout_s), None
        except ConfigError:
            raise
        except RewardTimeout:
            return None, f"timed out after {self.timeout_s:g} s"
        except Exception as e:  # the reward's own failure: this sample is unscored, the run goes on
            return None, describe(e)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _with_deadline(fn, timeout_s: float):
    if timeout_s <= 0:
        return fn()
    if threading.current_thread() is threading.main_thread():
        def alarm(signum, frame):
            raise RewardTimeout()

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: dict = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as e:  # handed to the caller's thread below
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise RewardTimeout()  # the thread is abandoned: Python cannot kill it (workers>0 can)
    if "err" in box:
        raise box["err"]
    return box["out"]


def _worker(conn, module: Optional[str]) -> None:
    """A worker process's loop: (name, rows) in, ("ok", Result) | ("err", text) | ("config", text) out."""
    import rltool.rewards  # noqa: F401  (registers the shipped rewards)

    if module is not None:
        load_reward_module(module)
    conn.send(("ready", None))  # start-up (imports) does not count against a call's deadline
    while True:
        try:
            name, rows = conn.recv()
        except (EOFError, OSError):  # the trainer is gone (even SIGKILLed): so is this worker
            return
        try:
            conn.send(("ok", REWARDS[name].score(rows)))
        except ConfigError as e:
            conn.send(("config", str(e)))
        except Exception as e:
            conn.send(("err", describe(e)))


STARTUP_S = 120


class _Pool:
    """Worker processes, started lazily; an overrunning one is killed and started again on demand.
    Non-batched rows are spread over the workers; each call has its own deadline."""

    def __init__(self, n: int, module: Optional[str]):
        self.ctx = mp.get_context("spawn")  # fork would copy the trainer's threads and CUDA state
        self.module = module
        self.slots: list[Optional[tuple]] = [None] * n  # (process, connection)

    def _get(self, i: int):
        if self.slots[i] is None:
            parent, child = self.ctx.Pipe()
            p = self.ctx.Process(target=_worker, args=(child, self.module), daemon=True)
            p.start()
            child.close()
            self.slots[i] = (p, parent)
            if not parent.poll(STARTUP_S):
                self._kill(i)
                raise RuntimeError(f"a reward worker process did not start within {STARTUP_S} s")
            try:
                parent.recv()
            except EOFError:  # it died importing: reward.module was checked at validation, so rare
                code = p.exitcode
                self._kill(i)
                raise RuntimeError(f"a reward worker process exited while starting (exit code {code}); "
                                   "see logs/rank<r>.log") from None
        return self.slots[i]

    def _kill(self, i: int) -> None:
        p, conn = self.slots[i]
        p.kill()
        p.join()
        conn.close()
        self.slots[i] = None

    def call(self, name: str, jobs: list[list[Row]], timeout_s: float) -> list[tuple[Optional[Result], Optional[str]]]:
        """(Result | None, error | None) per job; the jobs run len(slots) at a time."""
        out: list[tuple[Optional[Result], Optional[str]]] = []
        for start in range(0, len(jobs), len(self.slots)):
            batch = jobs[start:start + len(self.slots)]
            for slot, job in enumerate(batch):
                self._get(slot)[1].send((name, job))
            for slot in range(len(batch)):
                out.append(self._receive(slot, timeout_s))  # each waits at most timeout_s past the previous
        return out

    def _receive(self, slot: int, timeout_s: float) -> tuple[Optional[Result], Optional[str]]:
        p, conn = self.slots[slot]
        if not conn.poll(timeout_s if timeout_s > 0 else None):
            self._kill(slot)
            return None, f"timed out after {timeout_s:g} s"
        try:
            kind, payload = conn.recv()
        except EOFError:  # the worker died (a segfault, os._exit in the reward)
            code = p.exitcode
            self._kill(slot)
            return None, f"worker process died (exit code {code})"
        if kind == "config":
            raise ConfigError(payload)
        return (payload, None) if kind == "ok" else (None, payload)

    def close(self) -> None:
        for i, slot in enumerate(self.slots):
            if slot is not None:
                self._kill(i)
