"""Encoder agents end to end through the real CLI: real MiniLM, real environments, tiny budgets."""
import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rltool.ckpt import load_trainer_state
from tests.integration.helpers import read_jsonl, rltool

pytestmark = pytest.mark.slow
AGENT = ["algo=encoder_ppo", "actors=minilm_agent", "hardware=cpu", "hardware.threads=1"]


def test_text_bandit_learns_the_right_arm(tmp_path):
    # 8 rollouts of 16 steps x 8 envs at the shipped learning rate: the paying door is listed in a new position
    # every episode, so only text actions (scored by what they say) can learn it
    rltool("train", *AGENT, "env=bandit_text", "actors.heads.actions=text", "trainer.total_env_steps=1024",
           "trainer.num_envs=8", "algo.ppo.num_steps=16", "algo.ppo.num_minibatches=2",
           "trainer.eval_every=0", "algo.ppo.eval_episodes=64", f"hydra.run.dir={tmp_path}", timeout=600)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in rows if "reward/success" in r]
    assert len(train) == 8 and train[0]["reward/success"] < 0.6 and train[-1]["reward/success"] > 0.9
    # one description: every pooled dimension is constant over the visited states. Standardised without a
    # variance floor, the pooling's gradient was divided by 1e-4 (grad norms 12-60 from the second rollout on,
    # the clip at 0.5 shrinking every head's step); floored, they stay under 5
    assert max(r["policy/grad_norm"] for r in train) < 10
    assert all(torch.isfinite(torch.tensor([r["loss/policy"], r["loss/value"]])).all() for r in train)
    assert train[-1]["encoder/cache_hit_rate"] == 1.0  # one state and three actions, encoded in the first rollout
    final = [r for r in rows if "eval/success" in r][-1]
    assert final["eval/success"] == 1.0 and final["eval/reward"] == 1.0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # slippery FrozenLake: the environments' RNG decides where the agent slides, so it must travel too; so must
    # the feature statistics (in agent.pt) and the reward scaler's running return (in trainer_state.pt)
    args = [*AGENT, "env=frozenlake_text", "env.slippery=true", "trainer.total_env_steps=256", "trainer.num_envs=2",
            "algo.ppo.norm_reward=true",
            "algo.ppo.num_steps=32", "algo.ppo.num_minibatches=2", "algo.ppo.update_epochs=2", "trainer.save_every=2",
            "trainer.keep_last=4", "trainer.eval_every=0", "algo.ppo.eval_episodes=8"]
    rltool("train", *args, f"hydra.run.dir={tmp_path}", timeout=600)
    ckpts = tmp_path / "checkpoints"
    whole = {f: torch.load(ckpts / "step_000004" / f, weights_only=False) for f in ("agent.pt", "optimizer.pt", "trainer_state.pt")}
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    rltool("train", *args, f"resume={ckpts / 'step_000002'}", timeout=600)
    resumed = {f: torch.load(ckpts / "step_000004" / f, weights_only=False) for f in whole}
    for k, v in whole["agent.pt"].items():  # policy and value heads
        assert torch.equal(v, resumed["agent.pt"][k]), k
    for (i, a), (_, b) in zip(whole["optimizer.pt"]["state"].items(), resumed["optimizer.pt"]["state"].items()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]), i
    # positions, time-limit counters and RNGs of the environments
    assert [env_state(b) for b in whole["trainer_state.pt"]["envs"]] == [env_state(b) for b in resumed["trainer_state.pt"]["envs"]]
    assert whole["trainer_state.pt"]["next_obs"] == resumed["trainer_state.pt"]["next_obs"]
    assert whole["agent.pt"]["feature_norm.updates"] == 4
    scale, scale_resumed = whole["trainer_state.pt"]["reward_scale"], resumed["trainer_state.pt"]["reward_scale"]
    assert round(scale["count"]) == 256 and scale["var"] == scale_resumed["var"] and (scale["ret"] == scale_resumed["ret"]).all()
    # heads trained on standardised features cannot continue on raw ones: one line, before the encoder loads
    proc = rltool("train", *args, "actors.heads.feature_norm=none", f"resume={ckpts / 'step_000002'}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "trained with actors.heads.feature_norm=running; resume with actors.heads.feature_norm=running"), proc.stderr
    again = read_jsonl(tmp_path / "metrics.jsonl")[len(rows):]
    first = {r["step"]: r for r in rows if "loss/policy" in r}
    assert [r["step"] for r in again if "loss/policy" in r] == [192, 256]  # rollouts 3 and 4, not from scratch
    for r in again:
        if "loss/policy" in r:
            assert r["loss/policy"] == first[r["step"]]["loss/policy"] and r["reward/mean"] == first[r["step"]]["reward/mean"]


def test_checkpoints_go_through_the_lm_loops_writer(tmp_path):
    # rltool/ckpt.py `commit_checkpoint` for both loops: the trainer-state core every resume reads (the step, one
    # RNG state per rank), config.yaml, a manifest of every file, `latest`, pruning to trainer.keep_last
    rltool("train", *AGENT, "env=frozenlake_text", "trainer.total_env_steps=24", "trainer.num_envs=2",
           "algo.ppo.num_steps=4", "algo.ppo.num_minibatches=2", "trainer.save_every=1", "trainer.keep_last=2",
           "trainer.eval_every=0", "algo.ppo.eval_episodes=2", f"hydra.run.dir={tmp_path}", timeout=600)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_000002", "step_000003"]
    assert (ckpts / "latest").read_text() == "step_000003\n"
    newest = ckpts / "step_000003"
    manifest = json.loads((newest / "checkpoint.json").read_text())
    assert manifest["commit"] == 3 and set(manifest["files"]) == {"agent.pt", "optimizer.pt", "trainer_state.pt",
                                                                  "config.yaml"}
    state = load_trainer_state(newest)
    assert state["step"] == 3 and state["global_step"] == 24  # rollouts done, environment steps
    assert [sorted(r) for r in state["rng"]] == [["cuda", "numpy", "python", "torch"]]  # rng_states(): one rank
    assert (newest / "config.yaml").read_text() == (tmp_path / "config.yaml").read_text()


def env_state(pickled: bytes):
    env = pickle.loads(pickled).env  # FrozenLakeText -> TimeLimit -> ... -> FrozenLakeEnv
    u = env.unwrapped
    return int(u.s), u.lastaction, env._elapsed_steps, str(u.np_random.bit_generator.state)


def test_sweep_over_two_seeds(tmp_path):
    rltool("train", "-m", *AGENT, "env=frozenlake_text", "trainer.total_env_steps=128", "trainer.num_envs=2",
           "algo.ppo.num_steps=32", "algo.ppo.num_minibatches=2", "trainer.eval_every=0", "algo.ppo.eval_episodes=4",
           "seed=0,1", f"hydra.sweep.dir={tmp_path}", timeout=600)
    rows = list(csv.DictReader((tmp_path / "multirun_summary.csv").open()))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")]
    assert all(r["eval/reward"] != "" for r in rows)  # sweep_metric=eval/reward (conf/algo/encoder_ppo.yaml)


def fault_run(fault: str, tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(Path(__file__).with_name("ppo_fault_driver.py")), fault, *AGENT,
                           "trainer.total_env_steps=64", "trainer.num_envs=2", "algo.ppo.num_steps=4",
                           "algo.ppo.num_minibatches=2", "trainer.eval_every=0", "trainer.save_every=1",
                           f"hydra.run.dir={tmp_path}", *overrides], capture_output=True, text=True, timeout=300)


def test_nan_updates_stop_the_run_after_max_nonfinite_steps(tmp_path):
    # every reward nan: every update is skipped (weights untouched), and the third rollout in a row stops the run
    # before its checkpoint; the two before it were saved with finite weights
    proc = fault_run("nan_reward", tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "rltool: stopped: step 3: the loss or gradient norm was nan/inf for 3 steps in a row (updates skipped, weights "
        "untouched; trainer.max_nonfinite_steps); lower trainer.lr or check the rewards")
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    agent = torch.load(tmp_path / "checkpoints" / "step_000002" / "agent.pt", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in agent.values())
    skipped = [r["update/skipped_nonfinite"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss/policy" in r]
    assert skipped == [8, 8, 8]  # 4 epochs x 2 minibatches a rollout, every one skipped


def test_a_hung_environment_is_named_and_the_run_exits(tmp_path):
    proc = fault_run("stuck", tmp_path, "rollout.timeout_s=5")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "rltool: stopped: step 1: rollout did not finish within 5 s (rollout.timeout_s); exiting" in proc.stdout
