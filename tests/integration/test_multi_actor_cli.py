"""Several actors from the CLI, with the real embedded model and real vLLM (eager, tiny shapes): a
2-actor collaborative run with a frozen third actor trains both trainable actors (weights change,
per-actor metrics, per-actor checkpoints and final models, the frozen one never saved), a trained
actor evaluates alone (`rltool eval` with pass@n), and the parallel env (drafts + combiner) runs end to end
under GSPO with a KL term. The in-process checks
(engines serve their own actor, checkpoints restore every actor) are in test_multi_actor.py; they are
a separate module so its engines are closed before these runs start theirs.
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import OWN_VARIETY_REWARD, TINY, read_jsonl, rltool
from rltool import ckpt

SHAPES = [o for o in TINY if not o.startswith(("env=", "reward="))] + ["hardware.vllm_kv_cache_gib=1"]
ACTORS = ["actors=two_smollm", "+actors.judge.preset=smollm2_135m", "actors.judge.trainable=false"]


@pytest.fixture(scope="module")
def collab_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("collab")
    module = run / "rewards.py"
    module.write_text(OWN_VARIETY_REWARD)
    rltool("train", *SHAPES, "env=collab_arithmetic", f"reward.module={module}", "reward.terms=[{name: own_variety}]",
           "reward.success=own_variety", "env.round_spec='solver -> checker -> judge'",
           "env.answer_from=checker", *ACTORS, "trainer.lr=1e-4", "trainer.max_steps=2", "trainer.save_every=1",
           "trainer.keep_last=2", "rollout.max_new_tokens=12", "eval.size=4", f"hydra.run.dir={run}")
    return run


def test_collab_run_trains_both_actors_on_their_own_turns(collab_run):
    run = collab_run
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "time/step" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for name in ("solver", "checker"):
        assert all(r[f"{name}/update/rows"] > 0 and r[f"{name}/rollout/tokens"] > 0 for r in rows)
        assert all(0 <= r[f"{name}/reward/own_variety"] <= 1 for r in rows)  # the conversation reward ran
        assert all(abs(r[f"{name}/policy/mismatch_kl"]) < 1e-2 for r in rows)  # its engine holds its weights
    assert not any(k.startswith("judge/") for r in rows for k in r)  # frozen: no update, no metrics
    assert any(r["solver/reward/mean"] != r["checker/reward/mean"] for r in rows)  # scored per actor
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if "eval/accuracy_flexible" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for step in ("step_000001", "step_000002"):
        assert ckpt.saved_actors(run / "checkpoints" / step) == ["checker", "solver"]
    base = load_file(str(ckpt.model_dir(ckpt.actor_dir(run / "checkpoints" / "step_000001", "solver")) / "model.safetensors"))
    finals = {n: load_file(str(run / "final" / n / "model.safetensors")) for n in ("solver", "checker")}
    assert not (run / "final" / "judge").exists()
    key = "model.embed_tokens.weight"
    assert not torch.equal(finals["solver"][key], base[key])  # trained on after step 1
    assert not torch.equal(finals["solver"][key], finals["checker"][key])
    assert (run / "final" / "solver" / "README.md").is_file()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["id"].startswith("collab_arithmetic-") for s in samples)


def test_final_actor_evaluates_and_a_final_dir_of_actors_is_one_clear_line(collab_run, tmp_path):
    out = rltool("eval", "env=arithmetic", "eval.size=4", "eval.max_new_tokens=8", "eval.n=2", "hardware=cpu",
                 "rollout.enforce_eager=true", f"actors.path={collab_run / 'final' / 'checker'}", f"hydra.run.dir={tmp_path}")
    assert "eval/accuracy_flexible" in out.stdout and "eval/pass@2" in out.stdout
    assert (tmp_path / "eval.json").exists()
    bad = rltool("eval", "env=arithmetic", f"actors.path={collab_run / 'final'}", check=False)
    assert bad.returncode == 2 and "it holds the actors checker, solver" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_parallel_env_end_to_end_under_gspo_with_kl(tmp_path):
    # GSPO (sequence-level ratio, 2 iterations: old log-probs computed once) with a reference model and k3 KL in
    # the loss, on the drafts and the combined answer alike
    rltool("train", *SHAPES, "env=parallel_gsm8k", "reward=gsm8k", "env.drafts=2", "trainer.max_steps=1",
           "algo=gspo", "algo.kl_coef=0.05",
           "trainer.group_size=2", "trainer.micro_batch_size=2", "rollout.max_new_tokens=12",
           "rollout.max_prompt_len=512", "eval.size=2", "trainer.save_every=0", f"hydra.run.dir={tmp_path}")
    (row,) = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "time/step" in r]
    # one actor plays both roles: 2 prompts x G=2 attempts x (2 drafts + 1 answer)
    assert row["rollout/samples"] == 12 and row["update/rows"] >= 0
    assert math.isfinite(row["loss/kl"]) and row["loss/kl"] >= 0
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval/accuracy_flexible" in r] == [0, 1]


def test_two_lora_actors_on_one_multi_lora_engine(tmp_path):
    # rollout.multi_lora: one vLLM engine serves both actors' adapters; step 2 samples with the adapters synced
    # after step 1, so a near-zero mismatch KL there says each actor's turns came from its own adapter
    module = tmp_path / "rewards.py"
    module.write_text(OWN_VARIETY_REWARD)
    proc = rltool("train", *SHAPES, "env=collab_arithmetic", f"reward.module={module}",
                  "reward.terms=[{name: own_variety}]", "reward.success=own_variety", "actors=two_smollm",
                  "actors.solver.lora.r=8", "actors.checker.lora.r=8", "rollout.multi_lora=true", "trainer.lr=1e-3",
                  "trainer.max_steps=2", "trainer.save_every=0", "rollout.max_new_tokens=12", "eval.enabled=false",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert "engine: vllm for solver (its adapter on one multi-LoRA engine with checker)" in proc.stdout
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "time/step" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for name in ("solver", "checker"):
        assert all(r[f"{name}/update/rows"] > 0 for r in rows)
        assert abs(rows[1][f"{name}/policy/mismatch_kl"]) < 1e-3, name  # a stale adapter: ~0.012
    finals = {n: load_file(str(tmp_path / "run" / "final" / n / "model.safetensors")) for n in ("solver", "checker")}
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(finals["solver"][key], finals["checker"][key])  # two adapters, trained apart


@pytest.mark.parametrize("env", ["env=collab_arithmetic actors=two_smollm", "env=parallel_gsm8k",
                                 "env=gsm8k+collab_arithmetic actors=two_smollm"])
def test_validate_refuses_a_rollout_that_does_not_play_the_env_multi_actor_episodes(env):
    # ERL's rollout samples single-turn attempts and never calls the env's conversation: refused, one line, exit 2
    bad = rltool("validate", "algo=erl", *env.split(), "hardware=cpu", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "algo.rollout='erl'" in bad.stderr and "multi_actor" in bad.stderr and "grpo" in bad.stderr


def test_validate_refuses_a_system_prompt_that_reaches_python_internals():
    ok = rltool("validate", "env=collab_arithmetic", "actors=two_smollm", "hardware=cpu",
                "+env.system_prompts.solver='You are {{ name }}; the task: {{ question }}'")
    assert ok.returncode == 0
    for template in ("{{ name.__class__.__mro__[1].__subclasses__() }}",
                     '{{ cycler.__init__.__globals__.os.popen("id").read() }}'):
        bad = rltool("validate", "env=collab_arithmetic", "actors=two_smollm", "hardware=cpu",
                     f"+env.system_prompts.solver='{template}'", check=False)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "env.system_prompts.solver" in bad.stderr and "SecurityError" in bad.stderr, bad.stderr
