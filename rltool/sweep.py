"""Multirun sweeps (`rltool train -m ...`): a failing job does not end the sweep, and one table sums it up.

`run_job` is the task body of every multirun job. It catches the job's exception, prints one line
and hands the outcome to `SweepSummary`, the Hydra callback registered in conf/config.yaml. The
callback writes each job's row into the job's own directory (`sweep_job.json`; with the SLURM
launcher `on_job_end` runs on the compute node, not here), and at the end reads every row under the
sweep directory back, prints one table, writes `multirun_summary.csv` there and exits 1 if any job
failed. A sweep directory that is reused keeps the rows of its earlier jobs.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from rltool.config import ConfigError

COUNTERS = ("eval/reward/failed/", "eval/skipped_long")
"""Metrics that count trouble: a column of these that is 0 in every job is left out of the printed table."""
ROW_FILE = "sweep_job.json"
SUMMARY_FILE = "multirun_summary.csv"


@dataclass
class JobResult:
    status: str
    """ok | failed"""
    metrics: dict[str, float] = field(default_factory=dict)
    """The job's final eval metrics, as train() returned them."""
    error: str = ""
    job: int = -1
    overrides: list[str] = field(default_factory=list)
    run_dir: str = ""


# run_job -> on_job_end hand-over: Hydra calls the two back to back in the same process, whatever the
# launcher (hydra.core.utils.run_job). The task's return value is not free: sweepers need it as a float.
_outcome: JobResult | None = None


def run_job(job: Callable[[], dict[str, float] | None], label: str, job_dir: Path, sweep_metric: str) -> float | None:
    """Runs one job in a child process; returns its `sweep_metric` for the sweeper, or None when it has none.

    A failure is one line here, a traceback.txt in the job dir, a `failed` row in the summary and
    exit code 1 at the end; the sweep goes on (KeyboardInterrupt still stops it). A failed job
    returns None, not nan: Optuna's sweeper records a failed trial for a value that is not a float,
    while a nan makes optuna 2.x raise inside the sweeper and ends the sweep.
    """
    global _outcome
    _outcome, metrics = run_in_child(lambda: attempt(job, job_dir), label)
    if _outcome.status != "ok" or metrics is None:  # failed, or `rltool validate -m`: nothing to optimise
        return None
    if sweep_metric not in metrics:
        print(f"rltool: {label}: sweep_metric={sweep_metric!r} is not a final metric; available: "
              f"{', '.join(metrics) or 'none (eval.enabled=false)'}", file=sys.stderr)
        return None
    return metrics[sweep_metric]


Outcome = tuple[JobResult, "dict[str, float] | None"]


def run_in_child(attempt_job: Callable[[], Outcome], label: str) -> Outcome:
    """A job that hangs in an engine call can only be ended by ending its process (rltool/watchdog.py), and a
    reward may call sys.exit: so each job runs in a forked child and the sweep, in this process, survives it.
    The child also hands its memory (engines, model copies) back when it ends. This process has not imported
    torch (rltool.cli never does), so the fork copies no threads of it."""
    import multiprocessing as mp

    from rltool import watchdog

    parent_end, child_end = mp.get_context("fork").Pipe(duplex=False)

    def child() -> None:
        watchdog.on_expire(lambda reason: child_end.send((JobResult("failed", error=reason), None)))
        child_end.send(attempt_job())

    proc = mp.get_context("fork").Process(target=child, name=label)
    proc.start()
    child_end.close()
    try:
        outcome = parent_end.recv()
    except EOFError:  # the child ended without a word: sys.exit in a reward, a kill, an abort in C
        outcome = None
    proc.join()
    result, metrics = outcome or (JobResult("failed", error=f"the job's process ended (exit code {proc.exitcode}) "
                                                            "without reporting; see its log"), None)
    if result.status != "ok":
        print(f"rltool: {label} failed: {result.error}", file=sys.stderr)
    return result, metrics


def attempt(job: Callable[[], dict[str, float] | None], job_dir: Path) -> Outcome:
    """The job's outcome, never an exception (KeyboardInterrupt aside)."""
    try:
        metrics = job()
    except ConfigError as e:
        return JobResult("failed", error=f"config error: {e}"), None
    except Exception as e:  # the sweep outlives a failing job; the failure is reported, never silent
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "traceback.txt").write_text(traceback.format_exc())
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return JobResult("failed", error=f"{type(e).__name__}: {message} (traceback: {job_dir / 'traceback.txt'})"), None
    return JobResult("ok", metrics or {}), metrics


class SweepSummary(Callback):
    """Registered under hydra.callbacks; does nothing outside multirun mode."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        global _outcome
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        assert _outcome is not None, "the multirun task body must be rltool.sweep.run_job"
        run_dir = Path(config.hydra.runtime.output_dir)
        result = replace(_outcome, job=config.hydra.job.num, overrides=list(job_return.overrides), run_dir=str(run_dir))
        _outcome = None
        (run_dir / ROW_FILE).write_text(json.dumps(asdict(result)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sorted((JobResult(**json.loads(p.read_text())) for p in sweep_dir.glob(f"**/{ROW_FILE}")),
                      key=lambda r: r.job)
        columns = logged_metrics(rows, config.sweep_metric)
        write_csv(rows, columns, sweep_dir / SUMMARY_FILE)
        print_table(rows, columns, sweep_dir / SUMMARY_FILE)
        failed = [str(r.job) for r in rows if r.status != "ok"]
        if failed:
            print(f"rltool: {len(failed)} of {len(rows)} jobs failed (job {', '.join(failed)}): exit code 1",
                  file=sys.stderr)
            sys.exit(1)


def logged_metrics(rows: list[JobResult], sweep_metric: str) -> tuple[str, ...]:
    """The summary's columns: the final metrics the jobs logged, `sweep_metric` first, then in the order the
    jobs logged them (by job number; a metric only a later job has comes after the others)."""
    return tuple(dict.fromkeys([sweep_metric, *(k for r in rows for k in r.metrics)]))


def write_csv(rows: list[JobResult], columns: tuple[str, ...], path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["job", "overrides", "status", *columns, "run_dir", "error"])
        for r in rows:
            out.writerow([r.job, " ".join(r.overrides), r.status, *(r.metrics.get(c, "") for c in columns),
                          r.run_dir, r.error])


def print_table(rows: list[JobResult], columns: tuple[str, ...], csv_path: Path) -> None:
    """Overrides shared by every job are printed once below, so the rows show what the sweep varied."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    common = set.intersection(*(set(r.overrides) for r in rows)) if len(rows) > 1 else set()
    table = Table()
    table.add_column("job", no_wrap=True)
    table.add_column("overrides", overflow="fold")
    table.add_column("status", no_wrap=True)
    columns = tuple(c for c in columns if not c.startswith(COUNTERS) or any(r.metrics.get(c) for r in rows))
    for c in columns:  # eval/accuracy_strict -> accuracy_strict
        table.add_column(c.removeprefix("eval/"), justify="right", no_wrap=True)
    table.add_column("run dir", overflow="fold")
    for r in rows:
        cells = [f"{r.metrics[c]:.3f}" if c in r.metrics else "-" for c in columns]
        table.add_row(str(r.job), escape(" ".join(o for o in r.overrides if o not in common)),
                      "[green]ok" if r.status == "ok" else "[red]failed", *cells, escape(os.path.relpath(r.run_dir)))
    console = Console()
    if not console.is_terminal:  # a log file: one line per job however wide, not 80 columns of wrapping
        console = Console(width=10_000)
    print(f"multirun: final eval metrics of {len(rows)} jobs")
    console.print(table)
    if common:
        print("every job:", " ".join(o for o in rows[0].overrides if o in common))
    print(f"written: {csv_path}")
