"""Where metrics go: metrics.jsonl (always), wandb and TensorBoard (optional), and a progress line for humans.

metrics.jsonl is the source of truth: plots and the docs' tables are built from it, so a run is
fully inspectable without wandb. Only the main process constructs these with enabled=True.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.text import Text


def _scalar(v):
    # .item() on a tensor is a device sync: it happens here, once per step, and nowhere earlier.
    # Numpy scalars have .item() too; a non-scalar tensor raises, which is what we want.
    return v.item() if hasattr(v, "item") else v


class MetricsLog:
    """Appends `{"step": step, **metrics}` lines to run_dir/metrics.jsonl and mirrors them to the
    loggers named in `logger` (trainer.logger): wandb, and TensorBoard event files in run_dir/tb/
    under the same namespaced keys.

    The file is opened in append mode, so a resumed run continues the same file; `read_metrics`
    merges repeated steps (TensorBoard shows both values of a step logged twice). wandb takes its
    mode from WANDB_MODE itself (offline needs no network).

    Files and loggers open at the first write, not here: a run refused after its start (the memory
    plan, prompts that do not fit) leaves nothing but its config, so its directory is removed as
    unused (rltool/run_dir.py `remove_if_unused`).
    """

    def __init__(self, run_dir: Path, *, enabled: bool, logger: str | list[str] = "none", config: dict | None = None,
                 run_name: str = ""):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._loggers = [logger] if isinstance(logger, str) else list(logger)
        self._config, self._run_name = config, run_name
        self._metrics = self._samples = self._run = self._tb = None

    def _open(self) -> None:
        """At the first write: metrics.jsonl and samples.jsonl, and the loggers named in `logger`."""
        if self._metrics is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open_appending(self.run_dir / "metrics.jsonl")
        self._samples = open_appending(self.run_dir / "samples.jsonl")
        if "wandb" in self._loggers:
            import wandb  # lazy: slow to import and unused by most runs

            self._run = wandb.init(project="rltool", dir=str(self.run_dir), config=self._config,
                                   name=self._run_name or None)
        if "tensorboard" in self._loggers:
            from torch.utils.tensorboard import SummaryWriter  # lazy, as wandb

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._open()
        row = {k: _scalar(v) for k, v in metrics.items()}
        self._metrics.write(json.dumps({"step": step, **row}) + "\n")
        self._metrics.flush()  # a killed run still has every finished step on disk
        if self._run is not None:
            self._run.log(row, step=step)
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()  # as metrics.jsonl: a killed run keeps its finished steps

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """A few decoded rollouts per step; keys are free-form (prompt, completion, reward, ...)."""
        if not self.enabled or not rows:
            return
        self._open()
        for row in rows:
            self._samples.write(json.dumps({"step": step, **{k: _scalar(v) for k, v in row.items()}}, default=str) + "\n")
        self._samples.flush()
        if self._run is not None:
            import wandb

            columns = list(dict.fromkeys(k for row in rows for k in row))
            table = wandb.Table(columns=columns, data=[[_scalar(row.get(c)) for c in columns] for row in rows])
            self._run.log({"samples": table}, step=step)

    def log_data_order(self, step: int, example_ids: list[str]) -> None:
        """Which prompts each step trained on: resume is checked against this (data_order.jsonl)."""
        if self.enabled:
            with open_appending(self.run_dir / "data_order.jsonl") as f:
                f.write(json.dumps({"step": step, "examples": example_ids}) + "\n")

    def close(self) -> None:
        if self._metrics is None:  # disabled, or nothing was logged
            return
        self._metrics.close()
        self._samples.close()
        self._metrics = self._samples = None
        if self._run is not None:
            self._run.finish()
            self._run = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_appending(path: Path):
    """Open a .jsonl file for appending; a run killed mid-write left a partial last line, so the
    first new line starts on a line of its own (readers then skip just the partial one)."""
    f = open(path, "a")
    if f.tell() > 0:
        with open(path, "rb") as r:
            r.seek(-1, 2)
            if r.read(1) != b"\n":
                f.write("\n")
    return f


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The rows of a .jsonl file and how many lines were skipped: a line cut short by a crash
    mid-write (or anything else that is not a JSON object) is counted, not raised."""
    rows, skipped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
    return rows, skipped


def read_metrics(path: Path) -> list[dict]:
    """One dict per step, in step order. Lines with the same step are merged, later keys winning:
    separate train and eval `log` calls at one step combine, and steps re-run after a resume
    replace those logged before the crash. Partial lines (a crash mid-write) are skipped with
    one warning giving their count."""
    rows, skipped = read_jsonl(path)
    if skipped:
        logging.getLogger(__name__).warning("%s: skipped %d partial or unreadable line(s)", path, skipped)
    by_step: dict[int, dict] = {}
    for row in rows:
        if "step" in row:
            by_step.setdefault(row["step"], {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


class PhaseTimer:
    """`with timer("generate"): ...` adds host wall-clock seconds to that phase; `split()` returns
    and resets them. GPU work is asynchronous: a phase that ends without a sync hands its queued
    kernels to whichever phase next waits on the device."""

    def __init__(self):
        self._times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = perf_counter()
        try:
            yield
        finally:
            self._times[phase] = self._times.get(phase, 0.0) + perf_counter() - t0

    def split(self) -> dict[str, float]:
        times, self._times = self._times, {}
        return times


SHORT_PHASE = {"generate": "gen", "logprobs": "logp", "advantage": "adv", "update": "upd", "sync": "sync"}
ACC_KEYS = ("eval/accuracy", "eval/accuracy_strict", "eval/accuracy_flexible", "eval/success")
"""The first of these present is shown as `acc` (an env without accuracies: its success rate); eval runs every
few steps, so it stays shown."""


def _duration(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Step counter with ETA, headline metrics and the per-phase time split, main process only.

    On a terminal it is a live rich bar; otherwise (CI, `| tee`, cluster logs) one plain line per
    step, so logs still show progress and ETA. `step` is the step just finished, counting so the
    last one equals `total_steps`. The ETA is the mean step time since this object was created,
    so a slow first step (compilation, cache warm-up) makes it pessimistic for a while.
    """

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.total, self.start, self.enabled = total_steps, start_step, enabled
        self._t0 = perf_counter()
        self._acc: float | None = None
        self._console = Console()
        self._bar = None
        if enabled and self._console.is_terminal:
            self._bar = _Bar(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                             TextColumn("eta {task.fields[eta]}"), console=self._console)
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, eta="?")

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, step: int, metrics: dict, phase_times: dict[str, float]) -> None:
        if not self.enabled:
            return
        acc = next((metrics[k] for k in ACC_KEYS if k in metrics), None)
        self._acc = _scalar(acc) if acc is not None else self._acc
        done = step - self.start
        eta = _duration((perf_counter() - self._t0) / done * (self.total - step)) if done > 0 else "?"
        fields = self._fields(metrics)
        if self._bar is not None:
            self._bar.status = " | ".join(fields + [_phases(phase_times, " | ")])
            self._bar.update(self._task, completed=step, eta=eta)
        else:
            parts = [f"step {step}/{self.total}", *fields, _phases(phase_times, " "), f"eta {eta}"]
            print(" | ".join(p for p in parts if p), flush=True)

    def _fields(self, metrics: dict) -> list[str]:
        m = {k: _scalar(v) for k, v in metrics.items()}
        out = []
        if "reward/mean" in m:
            out.append(f"reward {m['reward/mean']:.3g}")
        if self._acc is not None:
            out.append(f"acc {self._acc:.3g}")
        if "loss/kl" in m:
            out.append(f"kl {m['loss/kl']:.3g}")
        if "perf/tokens_per_s" in m:
            out.append(f"{m['perf/tokens_per_s']:.0f} tok/s")
        return out


def _phases(times: dict[str, float], sep: str) -> str:
    return sep.join(f"{SHORT_PHASE.get(k, k)} {v:.1f}s" for k, v in times.items())


class _Bar(RichProgress):
    """A rich progress bar with a free-text status line under it (too long for one line)."""

    status = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.status:
            yield Text(self.status)  # plain Text: rich's repr highlighter would colour half of "1.2s"


def peak_memory_gib(device: str) -> float:
    """This process's peak so far: GPU memory allocated through torch (vLLM's weights and KV cache
    included: it runs in-process) on cuda, resident set size on cpu."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1024**3
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
