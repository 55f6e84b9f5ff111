"""The multirun summary: each job's outcome through run_job and SweepSummary.on_job_end, as Hydra's
run_job calls them, then on_multirun_end's CSV, table and exit code."""
import csv
import hashlib

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from rltool import sweep
from rltool.config import ConfigError, short_dirname

METRICS = {"eval/accuracy_strict": 0.25, "eval/accuracy_flexible": 0.5, "eval/accuracy_math_verify": 0.5,
           "eval/format_rate": 1.0, "eval/len": 7.0}
# the metrics the jobs logged, the sweep_metric (eval/accuracy_flexible in most tests here) first
HEADER = ["job", "overrides", "status", "eval/accuracy_flexible", "eval/accuracy_strict",
          "eval/accuracy_math_verify", "eval/format_rate", "eval/len", "run_dir", "error"]


def hydra_config(sweep_dir, num, mode=RunMode.MULTIRUN, sweep_metric="eval/accuracy_flexible"):
    """The keys of Hydra's job config the callback reads."""
    return OmegaConf.create({"sweep_metric": sweep_metric, "hydra": {
        "mode": mode, "job": {"num": num}, "runtime": {"output_dir": str(sweep_dir / str(num))},
        "sweep": {"dir": str(sweep_dir)}}})


def run_one(callback, sweep_dir, num, overrides, job, sweep_metric="eval/accuracy_flexible"):
    """One job as hydra.core.utils.run_job runs it: task body, then on_job_end with the task's return."""
    job_dir = sweep_dir / str(num)
    job_dir.mkdir(parents=True)
    value = sweep.run_job(job, f"job {num}", job_dir, sweep_metric)
    callback.on_job_end(hydra_config(sweep_dir, num, sweep_metric=sweep_metric),
                        JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value))
    return value


def raise_(error):
    raise error


def read_csv(path):
    return list(csv.reader(path.open()))


def test_failed_jobs_are_tabled_and_the_exit_code_is_one(tmp_path, capsys):
    cb = sweep.SweepSummary()
    # Jobs may end out of order (parallel launchers); rows come out by job number.
    assert run_one(cb, tmp_path, 2, ["seed=1"], lambda: raise_(RuntimeError("CUDA out of memory\ndetails"))) is None
    assert run_one(cb, tmp_path, 0, ["seed=0"], lambda: METRICS) == 0.5
    assert run_one(cb, tmp_path, 1, ["trainer.group_size=1"],
                   lambda: raise_(ConfigError("trainer.group_size=1: must be >= 2"))) is None
    with pytest.raises(SystemExit) as exit_:
        cb.on_multirun_end(hydra_config(tmp_path, 0))
    assert exit_.value.code == 1

    tb = tmp_path / "2" / "traceback.txt"
    assert read_csv(tmp_path / "multirun_summary.csv") == [
        HEADER,
        ["0", "seed=0", "ok", "0.5", "0.25", "0.5", "1.0", "7.0", str(tmp_path / "0"), ""],
        ["1", "trainer.group_size=1", "failed", "", "", "", "", "", str(tmp_path / "1"),
         "config error: trainer.group_size=1: must be >= 2"],
        ["2", "seed=1", "failed", "", "", "", "", "", str(tmp_path / "2"),
         f"RuntimeError: CUDA out of memory (traceback: {tb})"],
    ]
    assert "raise_(RuntimeError(" in tb.read_text()
    assert not (tmp_path / "1" / "traceback.txt").exists()  # a config error is its one line
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"rltool: job 2 failed: RuntimeError: CUDA out of memory (traceback: {tb})",
        "rltool: job 1 failed: config error: trainer.group_size=1: must be >= 2",
        "rltool: 2 of 3 jobs failed (job 1, 2): exit code 1",
    ]
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert [line.split("│")[3].strip() for line in table] == ["ok", "failed", "failed"]
    assert "0.250" in table[0] and "1.000" in table[0]


def test_all_ok_exits_normally_and_tables_an_extra_sweep_metric(tmp_path, capsys):
    cb = sweep.SweepSummary()
    metric = "eval/pass@4"
    assert run_one(cb, tmp_path, 0, ["algo=grpo", "seed=0"], lambda: METRICS | {metric: 0.75}, metric) == 0.75
    assert run_one(cb, tmp_path, 1, ["algo=dr_grpo", "seed=0"], lambda: METRICS, metric) is None  # no such metric
    cb.on_multirun_end(hydra_config(tmp_path, 0, sweep_metric=metric))

    rows = read_csv(tmp_path / "multirun_summary.csv")
    assert rows[0] == HEADER[:3] + [metric, "eval/accuracy_strict", "eval/accuracy_flexible"] + HEADER[5:]
    assert [r[:4] for r in rows[1:]] == [["0", "algo=grpo seed=0", "ok", "0.75"], ["1", "algo=dr_grpo seed=0", "ok", ""]]
    out, err = capsys.readouterr()
    assert err == (f"rltool: job 1: sweep_metric='{metric}' is not a final metric; available: "
                   + ", ".join(METRICS) + "\n")
    assert "every job: seed=0\n" in out  # shared overrides are printed once
    assert [line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│")] == ["algo=grpo",
                                                                                             "algo=dr_grpo"]


def test_columns_are_the_metrics_the_jobs_logged_with_the_sweep_metric_first(tmp_path, capsys):
    """A user's task logs no GSM8K accuracies: its table shows what its jobs did log, in the order they logged
    it (a metric only a later job logged comes after); zero failure counters stay in the CSV, not the table."""
    cb = sweep.SweepSummary()
    words = {"eval/success": 0.25, "eval/reward": 1.5, "eval/len": 3.0, "eval/reward/failed/said_it": 0.0}
    assert run_one(cb, tmp_path, 0, ["seed=0"], lambda: words, "eval/reward") == 1.5
    assert run_one(cb, tmp_path, 1, ["seed=1"], lambda: words | {"eval/pass@4": 0.5}, "eval/reward") == 1.5
    cb.on_multirun_end(hydra_config(tmp_path, 0, sweep_metric="eval/reward"))
    rows = read_csv(tmp_path / "multirun_summary.csv")
    assert rows[0] == ["job", "overrides", "status", "eval/reward", "eval/success", "eval/len",
                       "eval/reward/failed/said_it", "eval/pass@4", "run_dir", "error"]
    assert [r[3:8] for r in rows[1:]] == [["1.5", "0.25", "3.0", "0.0", ""], ["1.5", "0.25", "3.0", "0.0", "0.5"]]
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "job" in line and "status" in line)
    assert [c.strip() for c in header.split("┃")[4:8]] == ["reward", "success", "len", "pass@4"]


def test_the_default_sweep_metric_is_the_success_rate_on_the_runs_own_reward(compose_config):
    assert compose_config().sweep_metric == "eval/success"
    assert compose_config("algo=encoder_ppo", "env=frozenlake_text").sweep_metric == "eval/reward"  # an algorithm may set its own


def test_validate_jobs_return_nothing_and_eval_disabled_is_reported(tmp_path, capsys):
    cb = sweep.SweepSummary()
    assert run_one(cb, tmp_path, 0, [], lambda: None) is None
    assert capsys.readouterr().err == ""
    assert run_one(cb, tmp_path, 1, [], lambda: {}) is None
    assert "available: none (eval.enabled=false)" in capsys.readouterr().err


def hangs():
    """A phase stuck where Python cannot interrupt it, as a hung engine call is: only the watchdog ends it."""
    import time

    from rltool.watchdog import deadline

    with deadline("generate", 1, 0.2):
        time.sleep(60)


def exits():
    import sys

    sys.exit(0)  # e.g. from inside a user's reward


def test_a_hung_or_exiting_job_fails_that_job_and_the_sweep_goes_on(tmp_path, capsys):
    import time

    cb = sweep.SweepSummary()
    started = time.monotonic()
    assert run_one(cb, tmp_path, 0, ["seed=0"], hangs) is None
    assert time.monotonic() - started < 10  # the watchdog's 0.2 s, not the 60 s sleep
    assert run_one(cb, tmp_path, 1, ["seed=1"], exits) is None
    assert run_one(cb, tmp_path, 2, ["seed=2"], lambda: METRICS) == 0.5  # later jobs still run
    with pytest.raises(SystemExit):
        cb.on_multirun_end(hydra_config(tmp_path, 0))
    rows = read_csv(tmp_path / "multirun_summary.csv")
    assert [r[2] for r in rows[1:]] == ["failed", "failed", "ok"]
    assert rows[1][-1] == "step 1: generate did not finish within 0.2 s (rollout.timeout_s)"
    assert rows[2][-1].startswith("the job's process ended (exit code 0) without reporting")
    out, err = capsys.readouterr()
    assert "rltool: job 0 failed: step 1: generate did not finish within 0.2 s" in err
    assert "multirun: final eval metrics of 3 jobs" in out


def test_single_run_writes_no_row(tmp_path):
    sweep.SweepSummary().on_job_end(hydra_config(tmp_path, 0, mode=RunMode.RUN),
                                    JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=None))
    assert not (tmp_path / "0").exists()


def test_a_job_dirname_past_200_bytes_is_cut_and_ends_in_a_hash_of_the_whole_name():
    assert short_dirname("algo=grpo,seed=1") == "algo=grpo,seed=1"
    a, b = "algo=grpo," + "x" * 300, "algo=grpo," + "x" * 299 + "y"  # differ only past the cut
    assert short_dirname(a) == a[:200] + "~" + hashlib.sha1(a.encode()).hexdigest()[:8]
    assert short_dirname(b) != short_dirname(a) and len(short_dirname(b).encode()) == 209
    cut_in_a_char = "a" + "é" * 150  # 301 bytes: byte 200 splits an 'é', which is dropped, not mangled
    assert short_dirname(cut_in_a_char).split("~")[0] == "a" + "é" * 99
