"""The real CLI for a few steps on the embedded model: the loop runs, learns, checkpoints, resumes."""
import math
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from rltool.actors.embedded import materialize
from tests.integration.helpers import RLTOOL, TINY, by_step, read_jsonl, rltool

pytestmark = pytest.mark.slow
STEPS = ["trainer.max_steps=3", "trainer.save_every=1", "trainer.keep_last=2", "trainer.lr=1e-4", "seed=3"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("full")
    proc = rltool("train", *TINY, *STEPS, "trainer.eval_every=2", "trainer.ref_kl_rows=4", f"hydra.run.dir={run}")
    return run, proc


def test_steps_logged_with_finite_losses(full_run):
    run, proc = full_run
    rows = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for r in train_rows:
        for key in ("loss/policy", "policy/grad_norm", "policy/entropy_trained", "reward/mean", "perf/tokens_per_s"):
            assert math.isfinite(r[key]), key
        assert r["rollout/samples"] == 8
    # trainer.ref_kl_rows=4: KL to the base model measured, no KL term trained on
    kl = [r["policy/ref_kl"] for r in train_rows]
    assert all(math.isfinite(k) and k > -1e-6 for k in kl) and kl[0] < 0.05, kl  # step 1 samples from the base itself (k3 >= 0 up to rounding)
    assert not any("loss/kl" in r for r in train_rows)
    assert "step 1/3" in proc.stdout and "eta" in proc.stdout
    assert "training prompts (0 left out: longer than rollout.max_prompt_len=512 tokens)" in proc.stdout


def test_eval_at_zero_every_and_end(full_run):
    run, _ = full_run
    evals = by_step(read_jsonl(run / "metrics.jsonl"), "eval/accuracy_strict")
    assert sorted(evals) == [0, 2, 3]
    assert all(0.0 <= v <= 1.0 for v in evals.values())
    # on the run's own reward (reward=arithmetic: success and the one term are gsm8k_flexible, length penalty 0.5
    # per max_new_tokens=24): success is the flexible accuracy, reward that minus 0.5 * mean length / 24
    assert sorted(by_step(read_jsonl(run / "metrics.jsonl"), "eval/success")) == [0, 2, 3]
    for r in (r for r in read_jsonl(run / "metrics.jsonl") if "eval/success" in r):
        assert r["eval/success"] == r["eval/accuracy_flexible"], r
        assert math.isclose(r["eval/reward"], r["eval/accuracy_flexible"] - 0.5 * r["eval/len"] / 24, abs_tol=1e-9), r


def test_weights_changed_and_checkpoints_pruned(full_run):
    run, _ = full_run
    base = load_file(materialize() / "model.safetensors")
    final = load_file(run / "final" / "policy" / "model.safetensors")
    assert any(not torch.equal(base[k], final[k]) for k in base)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (run / "curves.png").stat().st_size > 1000


CANARIES = {"WANDB_API_KEY": "canary-wandb-0f3a9c", "OPENAI_API_KEY": "sk-canary-7d21be", "HF_TOKEN": "hf_canary5e8d44"}


def test_sigkill_at_a_checkpoint_commit_then_resume_matches_uninterrupted_and_leaks_no_secret(full_run, tmp_path):
    run, _ = full_run
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RLTOOL_FAULT="ckpt:rename@2", WANDB_MODE="offline", **CANARIES)
    # a real SIGKILL at step 2's save, after the commit rename and before `latest` is written (#14)
    proc = subprocess.run([*RLTOOL, "train", *TINY, *STEPS, "eval.enabled=false", f"hydra.run.dir={killed}"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_000001"

    env.pop("RLTOOL_FAULT")
    out = subprocess.run([*RLTOOL, "train", *TINY, *STEPS, "eval.enabled=false", "trainer.logger=wandb",
                          f"resume={killed}"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in out.stdout.splitlines() if "newest complete checkpoint" in line]
    assert said == [f"resume: {killed / 'checkpoints' / 'latest'} names 'step_000001'; using the newest complete "
                    "checkpoint, step_000002"], out.stdout[-2000:]
    assert "resumed from" in out.stdout and "at step 2" in out.stdout
    resumed = by_step(read_jsonl(killed / "data_order.jsonl"), "examples")
    uninterrupted = by_step(read_jsonl(run / "data_order.jsonl"), "examples")
    assert resumed == uninterrupted  # same prompts at every step, steps 1..3
    assert max(by_step(read_jsonl(killed / "metrics.jsonl"), "loss/policy")) == 3
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000003"]
    # no file the run wrote holds a secret (config, metrics, samples, checkpoints, logs, wandb's offline files)
    leaks = []
    for path in killed.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path}: {k}" for k, v in CANARIES.items() if v.encode() in data]
    assert not leaks and any(killed.rglob("wandb/*")), leaks


def test_dapo_dynamic_sampling_with_hf_engine(tmp_path):
    """rollout.engine=hf path; DAPO's dynamic sampling and overlong shaping run in the loop."""
    # filter on the shaped reward: TINY's length penalty makes groups differ even when no answer is right
    rltool("train", *TINY, "algo=dapo", "algo.dynamic_sampling_metric=reward", "rollout.engine=hf",
           "algo.overlong_buffer=8", "trainer.max_steps=1",
           "eval.enabled=false", "trainer.save_every=0", f"hydra.run.dir={tmp_path}")
    (row,) = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss/policy" in r]
    assert 1 <= row["rollout/groups"] <= 2 and math.isfinite(row["loss/policy"])


def test_console_has_rltool_lines_and_the_run_log_has_vllm(full_run):
    run, proc = full_run
    console = proc.stdout + proc.stderr
    assert "plan:" in proc.stdout and "engine: vllm ready in" in proc.stdout and "eval @ step 0 (" in proc.stdout
    for noise in ("INFO", "WARNING", "RotaryEmbedding", "vllm.", "Loading safetensors", "it/s]"):
        assert noise not in console, noise
    log = (run / "logs" / "rank0.log").read_text()
    assert "Initializing a V1 LLM engine" in log and "RotaryEmbedding" in log  # vLLM's start and its sync warning


def test_final_has_a_model_card(full_run):
    run, _ = full_run
    card = (run / "final" / "policy" / "README.md").read_text()
    final_acc = by_step(read_jsonl(run / "metrics.jsonl"), "eval/accuracy_strict")[3]
    assert "trained with **grpo**" in card and f"| eval/accuracy_strict | {final_acc:.4g} |" in card
    assert (run / "final" / "policy" / "curves.png").is_file() and "rltool train" in card
