"""Multirun through the real CLI on the HF engine: an Optuna sweep tables its trials, and a failing job
is reported while the sweep goes on and the exit code says so."""
import csv
import math

import pytest

from tests.integration.helpers import rltool

pytestmark = pytest.mark.slow
# One tiny training step per job; the HF engine keeps vLLM out of it.
TINY = ["env=arithmetic", "reward=arithmetic", "rollout.engine=hf", "hardware=cpu", "trainer.max_steps=1",
        "trainer.prompts_per_step=1", "trainer.micro_batch_size=2", "rollout.max_new_tokens=8", "eval.size=2",
        "eval.max_new_tokens=8"]
# Job dirs are named after the overrides; with Optuna's long floats the fixed ones would pass the
# 255-byte file-name limit, so they are left out of the name.
SHORT_DIRS = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(o.split("=")[0] for o in TINY) + "]"
# what the jobs log (reward=arithmetic: one gsm8k_flexible term, so eval/reward is in [0, 1] too)
METRICS = ["eval/success", "eval/reward", "eval/accuracy_strict", "eval/accuracy_flexible",
           "eval/accuracy_math_verify", "eval/format_rate"]


def summary(sweep_dir):
    return list(csv.DictReader((sweep_dir / "multirun_summary.csv").open()))


def test_optuna_sweep_tables_every_trial(tmp_path):
    proc = rltool("train", "-m", "hydra/sweeper=rltool_optuna", "hydra.sweeper.n_trials=2", *TINY,
                  "trainer.group_size=2", SHORT_DIRS, f"hydra.sweep.dir={tmp_path}", timeout=1800)
    rows = summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")]
    assert list(rows[0])[3] == "eval/success"  # the sweep_metric's column first
    for r in rows:
        assert all(0.0 <= float(r[m]) <= 1.0 for m in METRICS), r
        assert "trainer.lr=" in r["overrides"] and "algo.clip_eps_high=" in r["overrides"]
        assert (tmp_path / r["run_dir"] / "final" / "policy" / "model.safetensors").exists()
    assert len({r["run_dir"] for r in rows}) == 2
    # Optuna got each trial's sweep_metric (default eval/success: reward.success on the held-out set) as its objective.
    log = proc.stdout + proc.stderr
    assert "Best value: " in log
    best = float(log.split("Best value: ")[1].split()[0])
    assert math.isclose(best, max(float(r["eval/success"]) for r in rows))


def test_failing_and_hung_jobs_are_reported_and_the_sweep_goes_on(tmp_path):
    # -1 composes but fails validation inside its job (a config error at job time, not at launch); 0.01 s
    # expires while the job generates: the watchdog ends the job's process, not the sweep.
    proc = rltool("train", "-m", *TINY, "trainer.group_size=2", "rollout.timeout_s=-1,0.01,1800",
                  f"hydra.sweep.dir={tmp_path}", timeout=1800, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "failed"), ("2", "ok")]
    assert rows[0]["error"].startswith("config error: rollout.timeout_s=-1.0: must be >= 0")
    assert rows[1]["error"].endswith("did not finish within 0.01 s (rollout.timeout_s)")
    assert all(0.0 <= float(rows[2][m]) <= 1.0 for m in METRICS)
    assert "failed: config error: rollout.timeout_s=-1.0: must be >= 0" in proc.stderr
    assert "rltool: 2 of 3 jobs failed (job 0, 1): exit code 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "multirun: final eval metrics of 3 jobs" in proc.stdout
