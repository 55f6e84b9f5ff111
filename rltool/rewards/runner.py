"""Calls reward functions so that one bad sample cannot end or hang a run.

A reward that raises, calls sys.exit, returns something that is no reward (values.py), or runs past
`reward.timeout_s`, leaves that call's samples unscored (None: out of their group's baseline) and
the reason is kept for the run's one-line warning, instead of a traceback that loses every step
since the last checkpoint. `until` (a time.monotonic() instant: the reward phase's deadline,
`reward.phase_timeout_s`) cuts every call short at the phase's end. Two ways to run:

- `workers=0` (default): in this process, one call after another. The deadline is a timer thread
  that sends SIGALRM to the main thread until the call returns: a reward cannot cancel it (math_verify's
  own `signal.alarm(0)` does not touch it; a reward that catches it is interrupted again, and what it
  returns late is discarded). It interrupts Python code and sleeps, not a C extension that never
  returns to the interpreter; rltool/rewards/score.py's phase deadline stops the run then (if that C
  code also holds the GIL, nothing in this process can: use workers). Off the main thread (no
  signals there) the call runs in a daemon thread that is abandoned when it overruns.
- `workers=N`: N spawned worker processes (they import rltool.rewards, the plugins this process
  imported and reward.module, so they know the shipped rewards and those, not ones registered at run
  time by other code). Calls go to whichever worker is free, each with its own deadline, and are waited on
  together: N hung calls cost one timeout, not N. A worker that overruns is killed and replaced, so
  nothing can hang. Costs a pickle of each row and ~0.3 s per worker at start-up.

A `ConfigError` (a parameter no row can fill) is a bug in the reward's contract, not a bad sample:
it is raised, not swallowed.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Optional, Sequence

from rltool.config import ConfigError
from rltool.plugins import loaded_plugins
from rltool.rewards.registry import REWARDS, Reward, Row, feedback_entry, load_reward_module
from rltool.rewards.values import Value

Result = list[tuple[Optional[float], str]]
"""(value, feedback) per row; an unscored row is (None, "")."""
Outcome = tuple[Optional[list[Value]], Optional[str]]
"""One call's rows as the function returned them, or (None, why the whole call failed)."""

PHASE_OVER = "not scored: the reward phase ran past reward.phase_timeout_s"
RESEND_S = 0.2
"""How often an expired deadline interrupts a reward again, should it have caught the first."""


class RewardTimeout(BaseException):
    """Raised by the SIGALRM handler inside the reward: a BaseException, so neither Reward.run's
    wrapper nor a reward's own `except Exception` turns the deadline into an ordinary error."""


def describe(e: BaseException) -> str:
    """'ValueError: bad' with the wrapping RuntimeError of Reward.run taken off."""
    inner = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
    return f"{type(inner).__name__}: {(str(inner).splitlines() or [''])[0]}"


def entry(kind: str, name: str) -> Reward:
    return REWARDS[name] if kind == "reward" else feedback_entry(name)


class RewardRunner:
    """`runner.call(reward, rows, until) -> (Result, reasons)`: reasons[i] says why row i failed, or is None."""

    def __init__(self, timeout_s: float = 60.0, workers: int = 0, module: Optional[str] = None):
        self.timeout_s = float(timeout_s)
        self.pool = _Pool(workers, module) if workers > 0 else None

    def call(self, r: Reward, rows: Sequence[Row], until: Optional[float] = None) -> tuple[Result, list[Optional[str]]]:
        """A reason for each row unscored by an error, a timeout or a bad value (None for the rest,
        those the reward itself returned None for included)."""
        # one call per row for a per-completion reward (so one bad row fails alone), one for a batched one
        jobs = [list(rows)] if r.batched else [[row] for row in rows]
        if self.pool is not None:
            out = self.pool.call("feedback" if r.feedback else "reward", r.name, jobs, self.timeout_s, until)
        else:
            out = [self._in_process(r, job, until) for job in jobs]
        result: Result = []
        reasons: list[Optional[str]] = []
        for job, (values, err) in zip(jobs, out):
            if values is None:
                result += [(None, "")] * len(job)
                reasons += [err] * len(job)
                continue
            for value, text, bad in values:
                result.append((value, text))
                reasons.append(bad)
        return result, reasons

    def _in_process(self, r: Reward, job: list[Row], until: Optional[float]) -> Outcome:
        limit, by_phase = deadline_of(self.timeout_s, until, time.monotonic())
        if limit <= 0:
            return None, PHASE_OVER
        try:
            return _with_deadline(lambda: r.score(job), None if math.isinf(limit) else limit), None
        except ConfigError:
            raise
        except RewardTimeout:
            return None, PHASE_OVER if by_phase else f"timed out after {self.timeout_s:g} s"
        except Exception as e:  # the reward's own failure: this sample is unscored, the run goes on
            return None, describe(e)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def deadline_of(timeout_s: float, until: Optional[float], now: float) -> tuple[float, bool]:
    """Seconds a call started `now` may run (inf: no limit), and whether the phase's end is what limits it."""
    call = timeout_s if timeout_s > 0 else math.inf
    phase = until - now if until is not None else math.inf
    return min(call, phase), phase < call


def _with_deadline(fn, timeout_s: Optional[float]):
    if timeout_s is None:
        return fn()
    if threading.current_thread() is not threading.main_thread():
        return _in_thread(fn, timeout_s)
    expired, done = threading.Event(), threading.Event()
    main = threading.main_thread().ident

    def ring() -> None:  # a thread, not setitimer: signal.alarm(0) in a reward (math_verify) would cancel that
        if done.wait(timeout_s):
            return
        expired.set()
        while not done.is_set():  # again, should the reward catch it or install its own handler meanwhile
            signal.pthread_kill(main, signal.SIGALRM)
            done.wait(RESEND_S)

    def alarm(signum, frame):
        if expired.is_set() and not done.is_set():
            raise RewardTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    clock = threading.Thread(target=ring, name="reward-deadline", daemon=True)
    clock.start()
    try:
        out = fn()
    finally:
        done.set()
        clock.join()  # a signal it sent runs `alarm` (a no-op now) before this returns
        signal.signal(signal.SIGALRM, previous)
    if expired.is_set():  # it caught the deadline and returned late: still late
        raise RewardTimeout()
    return out


def _in_thread(fn, timeout_s: float):
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


def _worker(conn, module: Optional[str], plugins: tuple[str, ...] = ()) -> None:
    """A worker process's loop: (kind, name, rows) in, ("ok", [Value]) | ("err", text) | ("config", text) out."""
    import rltool.rewards  # noqa: F401  (registers the shipped rewards)
    from rltool.plugins import load_plugins

    load_plugins(plugins)
    if module is not None:
        load_reward_module(module)
    conn.send(("ready", None))  # start-up (imports) does not count against a call's deadline
    while True:
        try:
            kind, name, rows = conn.recv()
        except (EOFError, OSError):  # the trainer is gone (even SIGKILLed): so is this worker
            return
        try:
            conn.send(("ok", entry(kind, name).score(rows)))
        except ConfigError as e:
            conn.send(("config", str(e)))
        except Exception as e:
            conn.send(("err", describe(e)))


STARTUP_S = 120


class _Pool:
    """Worker processes, started lazily; an overrunning one is killed and started again on demand.
    A call's jobs go to whichever worker is free; each job has its own deadline from when it is sent."""

    def __init__(self, n: int, module: Optional[str]):
        self.ctx = mp.get_context("spawn")  # fork would copy the trainer's threads and CUDA state
        self.module = module
        self.plugins = loaded_plugins()  # a plugin's rewards are scored in the workers too
        self.slots: list[Optional[tuple]] = [None] * n  # (process, connection)

    def _start(self, slots: Sequence[int]) -> None:
        """Start the missing workers of `slots` together, then wait until each has imported the rewards."""
        started = []
        for i in slots:
            if self.slots[i] is None:
                parent, child = self.ctx.Pipe()
                p = self.ctx.Process(target=_worker, args=(child, self.module, self.plugins), daemon=True)
                p.start()
                child.close()
                self.slots[i] = (p, parent)
                started.append(i)
        for i in started:
            p, parent = self.slots[i]
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

    def _kill(self, i: int) -> None:
        p, conn = self.slots[i]
        p.kill()
        p.join()
        conn.close()
        self.slots[i] = None

    def call(self, kind: str, name: str, jobs: list[list[Row]], timeout_s: float,
             until: Optional[float]) -> list[Outcome]:
        """An Outcome per job, in order."""
        out: list[Outcome] = [(None, PHASE_OVER)] * len(jobs)
        queue = deque(range(len(jobs)))
        busy: dict[int, tuple[int, float, bool]] = {}  # slot -> (job, deadline, limited by the phase)
        try:
            while queue or busy:
                free = [i for i in range(len(self.slots)) if i not in busy][:len(queue)]
                self._start(free)
                for slot in free:
                    now = time.monotonic()
                    limit, by_phase = deadline_of(timeout_s, until, now)
                    if limit <= 0:  # the phase is over: what is still queued stays unscored
                        queue.clear()
                        break
                    job = queue.popleft()
                    self.slots[slot][1].send((kind, name, jobs[job]))
                    busy[slot] = (job, now + limit, by_phase)
                if not busy:
                    break
                soonest = min(d for _, d, _ in busy.values())
                ready = wait([self.slots[i][1] for i in busy],
                             None if math.isinf(soonest) else max(0.0, soonest - time.monotonic()))
                now = time.monotonic()
                for slot, (job, deadline, by_phase) in list(busy.items()):
                    if self.slots[slot][1] in ready:
                        out[job] = self._receive(slot)
                    elif now >= deadline:
                        self._kill(slot)
                        out[job] = (None, PHASE_OVER if by_phase else f"timed out after {timeout_s:g} s")
                    else:
                        continue
                    del busy[slot]
        except BaseException:  # a ConfigError or an interrupt: a busy worker's late answer must not meet the next call
            for slot in busy:
                if self.slots[slot] is not None:
                    self._kill(slot)
            raise
        return out

    def _receive(self, slot: int) -> Outcome:
        p, conn = self.slots[slot]
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
