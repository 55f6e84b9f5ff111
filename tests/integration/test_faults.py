"""Faults injected into the real CLI (#14): a real SIGKILL of a real training process mid-checkpoint,
a reward that really raises, secrets that must not reach any file the run writes. The rest of the
fault suite runs without a training process (tests/unit/test_ckpt.py, test_reliability*.py)."""
import os
import subprocess

import pytest

from tests.integration.helpers import RLTOOL, TINY, by_step, read_jsonl, rltool

pytestmark = pytest.mark.slow
CANARIES = {"WANDB_API_KEY": "canary-wandb-0f3a9c", "OPENAI_API_KEY": "sk-canary-7d21be", "HF_TOKEN": "hf_canary5e8d44"}
FAST = [*TINY, "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=1", "eval.enabled=false", "seed=5"]


def test_sigkill_at_a_checkpoint_commit_then_resume_finishes_and_leaks_no_secret(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RLTOOL_FAULT="ckpt:rename", WANDB_MODE="offline", **CANARIES)
    # killed at step 1's save, after the commit rename and before `latest` is written
    killed = subprocess.run([*RLTOOL, "train", *FAST, f"hydra.run.dir={run}"], env=env, capture_output=True,
                            text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (run / "checkpoints" / "latest").exists() and (run / "checkpoints" / "step_000001").is_dir()

    env.pop("RLTOOL_FAULT")
    out = subprocess.run([*RLTOOL, "train", *FAST, "trainer.logger=wandb", f"resume={run}"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in out.stdout.splitlines() if "using the newest complete checkpoint" in line]
    assert said == [f"resume: {run / 'checkpoints' / 'latest'} is missing or empty; using the newest complete "
                    "checkpoint, step_000001"]
    assert "at step 1" in out.stdout
    assert sorted(by_step(read_jsonl(run / "metrics.jsonl"), "loss/policy")) == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000002"]  # debris gone
    # k: no file the run wrote holds a secret (config, metrics, samples, checkpoints, logs, wandb's offline files)
    leaks = []
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path}: {k}" for k, v in CANARIES.items() if v.encode() in data]
    assert not leaks and any(run.rglob("wandb/*")), leaks


REWARDS = '''
from rltool.rewards import reward

@reward("always_raises")
def always_raises(completion, answer):
    raise ValueError("judge unreachable")
'''


def test_a_reward_failing_every_step_stops_the_run_after_a_checkpoint(tmp_path):
    module = tmp_path / "rewards.py"
    module.write_text(REWARDS)
    run = tmp_path / "run"
    proc = rltool("train", *TINY, "trainer.max_steps=6", "trainer.save_every=0", "eval.enabled=false",
                  f"reward.module={module}", "reward.terms=[{name: always_raises}]", "reward.success=always_raises",
                  f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    stopped = [line for line in proc.stderr.splitlines() if line.startswith("rltool: stopped:")]
    assert len(stopped) == 1 and "'always_raises'" in stopped[0] and "ValueError: judge unreachable" in stopped[0]
    assert "Traceback" not in proc.stderr
    assert (run / "checkpoints" / "step_000003").is_dir()  # saved before stopping (reward.max_failed_steps=3)
    rows = read_jsonl(run / "metrics.jsonl")
    assert by_step(rows, "reward/failed/always_raises") == {1: 8.0, 2: 8.0, 3: 8.0}


def test_nan_on_one_zero3_rank_skips_the_step_on_every_rank(tmp_path):
    import json
    import sys
    from pathlib import Path

    from rltool.launch import accelerate_config

    out = tmp_path / "nonfinite.json"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config(),
               "--num_processes", "2", "--main_process_port", "29533",
               str(Path(__file__).with_name("nonfinite_worker.py")), str(out)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    got = json.loads(out.read_text())
    assert got["skipped"] == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]  # both ranks skipped the poisoned step, only it
    assert got["unchanged_by_poison"] and got["moved_after"] and got["finite"]
