"""Faults injected into the real CLI (#14): a reward that really raises, a NaN on one ZeRO-3 rank. The real
SIGKILL of a training process mid-checkpoint (and the secrets no file may hold) is test_train_loop.py's
kill-and-resume run; the rest of the fault suite runs without a training process (tests/unit/test_ckpt.py,
test_reliability*.py)."""
import os
import subprocess

import pytest

from tests.integration.helpers import TINY, by_step, read_jsonl, rltool

pytestmark = pytest.mark.slow


REWARDS = '''
from rltool.rewards import reward

@reward("always_bad")  # a string is not a reward (float("1e39") would even parse, as inf in float32)
def always_bad(completion, answer):
    return "1e39"
'''


def test_a_reward_failing_every_step_stops_the_run_after_a_checkpoint(tmp_path):
    module = tmp_path / "rewards.py"
    module.write_text(REWARDS)
    run = tmp_path / "run"
    proc = rltool("train", *TINY, "trainer.max_steps=6", "trainer.save_every=0", "eval.enabled=false",
                  f"reward.module={module}", "reward.terms=[{name: always_bad}]", "reward.success=always_bad",
                  f"hydra.run.dir={run}", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    stopped = [line for line in proc.stderr.splitlines() if line.startswith("rltool: stopped:")]
    assert len(stopped) == 1 and "'always_bad'" in stopped[0] and "returned str '1e39'" in stopped[0]
    assert "Traceback" not in proc.stderr
    said = [line for line in proc.stdout.splitlines() if "unscored by reward 'always_bad'" in line]
    assert len(said) == 1 and "returned str '1e39'" in said[0]  # once, with the reward's name and the value's type
    assert (run / "checkpoints" / "step_000003").is_dir()  # saved before stopping (reward.max_failed_steps=3)
    rows = read_jsonl(run / "metrics.jsonl")
    assert by_step(rows, "reward/failed/always_bad") == {1: 8.0, 2: 8.0, 3: 8.0}


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
