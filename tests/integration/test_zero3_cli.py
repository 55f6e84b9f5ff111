"""`rltool train -m hardware=cpu_zero3 algo=erl` end to end (a sweep job re-launched under accelerate, 2 ZeRO-3
ranks, per-rank vLLM, ERL's own rollout, a sharded KL reference, sharded eval, checkpoint), resumed by the explicit
`accelerate launch` form across two "machines" on loopback, one process each, as scripts/launch_slurm.sh starts them;
and two trainable actors (a collaborative run) on 2 ZeRO-3 ranks, each its own DeepSpeed engine and vLLM engine."""
import csv
import math
import os
import shutil
import subprocess
import sys

import psutil
import pytest
import torch
from safetensors.torch import load_file

from rltool.actors.embedded import materialize
from rltool.ckpt import load_trainer_state, resolve_checkpoint
from rltool.launch import accelerate_config
from tests.integration.helpers import OWN_VARIETY_REWARD, TINY, by_step, read_jsonl, rltool

pytestmark = pytest.mark.slow
ZERO3_TINY = [o for o in TINY if not o.startswith("hardware=")] + ["hardware=cpu_zero3"]
# a multirun job's dir is named after its overrides; with all of ZERO3_TINY's it passes the 255-byte file-name limit
# (and a run dir named `0-` is one that `resume=` can name: a name with `=` and `,` is not an override's value)
SHORT_DIRS = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(
    o.split("=")[0] for o in [*ZERO3_TINY, "algo", "algo.kl_coef", "seed", "trainer.max_steps", "trainer.save_every"]) + "]"


def test_cpu_zero3_sweep_job_trains_erl_then_two_machines_resume_it(tmp_path):
    # One run, two launch forms (each multi-rank launch costs minutes on 2 cores): a one-job sweep,
    # `rltool train -m hardware=cpu_zero3 algo=erl`, re-launches its job under accelerate for steps 1-2 (ERL owns
    # its rollout: attempt, gated reflection, retry, on each rank's own prompts); then two "machines" launched
    # explicitly resume that job's run to step 2, with 2 iterations (old log-probs: padded no-grad forwards).
    sweep = tmp_path / "sweep"
    # a KL term (the reference is sharded too); short reflections keep ERL's second generation cheap
    extra = ["algo=erl", "algo.kl_coef=0.01", "algo.erl.reflection_max_new_tokens=16", "seed=3"]
    rltool("train", "-m", *ZERO3_TINY, *extra, "trainer.max_steps=1", "trainer.save_every=1", SHORT_DIRS,
           f"hydra.sweep.dir={sweep}")
    (row,) = list(csv.DictReader((sweep / "multirun_summary.csv").open()))
    assert row["status"] == "ok" and 0.0 <= float(row["eval/accuracy_flexible"]) <= 1.0  # back in the sweep's table
    run = sweep / row["run_dir"]
    rows = read_jsonl(run / "metrics.jsonl")
    assert sorted(by_step(rows, "policy/grad_norm")) == [1] and 1 in by_step(rows, "policy/ref_kl")
    assert sorted(by_step(rows, "eval/accuracy_flexible")) == [0, 1]  # eval sharded over both ranks
    assert by_step(rows, "rollout/samples")[1] > 8 and 1 in by_step(rows, "erl/gated_frac")  # attempts + retries
    assert (run / "checkpoints/step_000001/actors/policy/zero").is_dir()  # DeepSpeed's shards of weights and Adam state
    trained = load_file(str(run / "final/policy/model.safetensors"))
    base = load_file(str(materialize() / "model.safetensors"))
    assert "lm_head.weight" not in trained  # tied: saved once, as save_pretrained does
    assert trained.keys() == base.keys() - {"lm_head.weight"}
    assert any((trained[k] != base[k]).any() for k in trained), "a step left the weights unchanged"

    # another branch's newer checkpoint (a copy of step 1, as a run that went on from it leaves): resuming step 1 on
    # two machines must move it aside once (global rank 0, before the others read the directory), never replace it
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "step_000001", ckpts / "step_000002", copy_function=os.link)
    (ckpts / "latest").write_text("step_000002\n")
    # the same overrides minus the hardware profile: the launcher's world (2 machines x 1 process) is the one that trains
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    machines = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config(),
         "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
         "--main_process_ip", "127.0.0.1", "--main_process_port", "29517",
         "-m", "rltool", "train", *[o for o in ZERO3_TINY if not o.startswith("hardware=")], *extra,
         "algo.iterations=2", "trainer.max_steps=2", "trainer.save_every=1", f"resume={ckpts / 'step_000001'}",
         f"hydra.run.dir={tmp_path / 'resumed'}"],
        # cwd: accelerate's multi-machine launcher writes the environment into ./.deepspeed_env
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path) for rank in (0, 1)]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    for rank, (m, out) in enumerate(zip(machines, outputs)):
        assert m.returncode == 0, f"machine {rank} exited {m.returncode}\n{out[-6000:]}"
    assert "2 processes" in outputs[0]  # machine 0 holds rank 0, which prints the plan and logs
    assert "resumed from" in outputs[0] and "step_000001" in outputs[0]
    (aside,) = ckpts.glob("superseded-*")  # moved once, by one machine; the other read the directory after it
    assert "they are kept in" in outputs[0] and (aside / "step_000002" / "trainer_state.pt").is_file()
    assert resolve_checkpoint(str(run)) == ckpts / "step_000002"  # the resumed branch's own step 2, ...
    assert load_trainer_state(ckpts / "step_000002")["step"] == 2  # (the copy moved aside says step 1)
    rows = read_jsonl(run / "metrics.jsonl")  # the resumed run writes into the run it continues
    assert sorted(by_step(rows, "rollout/samples")) == [1, 2]
    assert 2 in by_step(rows, "policy/grad_norm") and 2 in by_step(rows, "eval/accuracy_flexible")
    resumed = load_file(str(run / "final/policy/model.safetensors"))  # step 2's final replaced step 1's
    assert resumed.keys() == trained.keys() and any((resumed[k] != trained[k]).any() for k in resumed)


# Each rank holds two vLLM engines and two ZeRO-3 trainers: ~10.5 GB RSS per rank, measured. On a 24 GiB machine
# two ranks and the test process leave ~1 GB free, one noisy neighbour away from an OOM kill: run where there is room.
@pytest.mark.skipif(psutil.virtual_memory().total < 30 * 2**30, reason="needs ~22 GB for 2 ranks x 2 actors; < 30 GiB RAM")
def test_two_trainable_actors_under_zero3_on_two_ranks(tmp_path):
    # each trainable actor is its own DeepSpeed engine and its own vLLM engine (external_launcher) on every rank
    module = tmp_path / "rewards.py"
    module.write_text(OWN_VARIETY_REWARD)
    run = tmp_path / "run"
    rltool("train", *[o for o in ZERO3_TINY if not o.startswith(("env=", "reward="))], "env=collab_arithmetic",
           f"reward.module={module}", "reward.terms=[{name: own_variety}]", "reward.success=own_variety",
           "hardware.vllm_kv_cache_gib=1", "rollout.max_new_tokens=16", "eval.size=4", "eval.max_new_tokens=16",
           "trainer.lr=1e-4", "trainer.max_steps=2", "trainer.save_every=2", f"hydra.run.dir={run}")
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "time/step" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for name in ("solver", "checker"):
        assert any(r[f"{name}/update/rows"] > 0 for r in rows), name  # each actor took a real step
        assert all(math.isfinite(r[f"{name}/policy/grad_norm"]) for r in rows)
        kls = [r[f"{name}/policy/mismatch_kl"] for r in rows if f"{name}/policy/mismatch_kl" in r]
        assert kls and all(abs(k) < 1e-2 for k in kls)  # its engine generates with its own synced weights
        assert (run / "checkpoints" / "step_000002" / "actors" / name / "zero").is_dir()
    base = load_file(str(materialize() / "model.safetensors"))
    finals = {n: load_file(str(run / "final" / n / "model.safetensors")) for n in ("solver", "checker")}
    key = "model.embed_tokens.weight"
    assert not torch.equal(finals["solver"][key], base[key]) and not torch.equal(finals["checker"][key], base[key])
    assert not torch.equal(finals["solver"][key], finals["checker"][key])


def test_two_lora_actors_share_one_multi_lora_engine_under_zero3(tmp_path):
    # rollout.multi_lora under ZeRO-3: each rank's one engine serves both actors' adapters, each adapter gathered
    # from its DeepSpeed engine's shards at the sync; step 2 samples with the adapters step 1 trained
    module = tmp_path / "rewards.py"
    module.write_text(OWN_VARIETY_REWARD)
    run = tmp_path / "run"
    proc = rltool("train", *[o for o in ZERO3_TINY if not o.startswith(("env=", "reward="))], "env=collab_arithmetic",
                  f"reward.module={module}", "reward.terms=[{name: own_variety}]", "reward.success=own_variety",
                  "actors.solver.lora.r=8", "actors.checker.lora.r=8", "rollout.multi_lora=true",
                  "hardware.vllm_kv_cache_gib=1", "rollout.max_new_tokens=12", "eval.enabled=false",
                  "trainer.lr=1e-3", "trainer.max_steps=2", "trainer.save_every=2", f"hydra.run.dir={run}")
    assert "engine: vllm for solver (its adapter on one multi-LoRA engine with checker)" in proc.stdout
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "time/step" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for name in ("solver", "checker"):
        assert all(r[f"{name}/update/rows"] > 0 for r in rows), name
        assert abs(rows[1][f"{name}/policy/mismatch_kl"]) < 1e-3, name  # served its own synced adapter
        assert (run / "checkpoints" / "step_000002" / "actors" / name / "zero").is_dir()
    finals = {n: load_file(str(run / "final" / n / "model.safetensors")) for n in ("solver", "checker")}
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(finals["solver"][key], finals["checker"][key])  # two adapters, trained apart
