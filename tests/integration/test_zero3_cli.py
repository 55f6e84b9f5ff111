"""`rltool train hardware=cpu_zero3` end to end (re-launch under accelerate, 2 ZeRO-3 ranks, per-rank vLLM,
a sharded KL reference, sharded eval, checkpoint), resumed by the explicit `accelerate launch` form across two "machines" on
loopback, one process each, as scripts/launch_slurm.sh starts them on a cluster."""
import csv
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from rltool.actors.embedded import materialize
from rltool.launch import accelerate_config
from tests.integration.helpers import TINY, by_step, read_jsonl, rltool

pytestmark = pytest.mark.slow
ZERO3_TINY = [o for o in TINY if not o.startswith("hardware=")] + ["hardware=cpu_zero3"]
# a multirun job's dir is named after its overrides; with all of ZERO3_TINY's it passes the 255-byte file-name limit
SHORT_DIRS = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(o.split("=")[0] for o in ZERO3_TINY) + "]"


def test_cpu_zero3_trains_saves_and_resumes_on_two_machines(tmp_path):
    # One run, two launch forms (each multi-rank launch costs minutes on 2 cores): `rltool train hardware=cpu_zero3`
    # re-launches itself for steps 1-2, then two "machines" launched explicitly resume it to step 3.
    run = tmp_path / "run"
    # a KL term (the reference is sharded too) and 2 iterations (old log-probs: padded no-grad forwards)
    extra = ["algo.kl_coef=0.01", "algo.iterations=2"]
    proc = rltool("train", *ZERO3_TINY, *extra, "trainer.max_steps=2", "trainer.save_every=2", f"hydra.run.dir={run}")
    assert "launching 2 of 2 ranks" in proc.stderr and "2 processes" in proc.stdout
    rows = read_jsonl(run / "metrics.jsonl")
    assert sorted(by_step(rows, "policy/grad_norm")) == [1, 2] and 2 in by_step(rows, "policy/ref_kl")
    assert sorted(by_step(rows, "eval/accuracy_flexible")) == [0, 2]  # eval sharded over both ranks
    assert by_step(rows, "rollout/samples") == {1: 8.0, 2: 8.0}  # 2 prompts x 4 over the two ranks
    assert (run / "checkpoints/step_000002/actors/policy/zero").is_dir()  # DeepSpeed's shards of weights and Adam state
    trained = load_file(str(run / "final/policy/model.safetensors"))
    base = load_file(str(materialize() / "model.safetensors"))
    assert "lm_head.weight" not in trained  # tied: saved once, as save_pretrained does
    assert trained.keys() == base.keys() - {"lm_head.weight"}
    assert any((trained[k] != base[k]).any() for k in trained), "two steps left the weights unchanged"

    # the same overrides minus the hardware profile: the launcher's world (2 machines x 1 process) is the one that trains
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    machines = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config(),
         "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
         "--main_process_ip", "127.0.0.1", "--main_process_port", "29517",
         "-m", "rltool", "train", *[o for o in ZERO3_TINY if not o.startswith("hardware=")], *extra,
         "trainer.max_steps=3", f"resume={run}", f"hydra.run.dir={tmp_path / 'resumed'}"],
        # cwd: accelerate's multi-machine launcher writes the environment into ./.deepspeed_env
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path) for rank in (0, 1)]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    for rank, (m, out) in enumerate(zip(machines, outputs)):
        assert m.returncode == 0, f"machine {rank} exited {m.returncode}\n{out[-6000:]}"
    assert "2 processes" in outputs[0]  # machine 0 holds rank 0, which prints the plan and logs
    assert "resumed from" in outputs[0] and "step_000002" in outputs[0]
    rows = read_jsonl(run / "metrics.jsonl")  # the resumed run writes into the run it continues
    assert by_step(rows, "rollout/samples") == {1: 8.0, 2: 8.0, 3: 8.0}
    assert 3 in by_step(rows, "policy/grad_norm") and 3 in by_step(rows, "eval/accuracy_flexible")
    resumed = load_file(str(run / "final/policy/model.safetensors"))  # step 3's final replaced step 2's
    assert resumed.keys() == trained.keys() and any((resumed[k] != trained[k]).any() for k in resumed)


def test_multirun_erl_job_under_zero3(tmp_path):
    # each job of a sweep gets its own `accelerate launch`; its final eval comes back to the summary table.
    # ERL owns its rollout (attempt, gated reflection, retry): each rank runs it on its own prompts.
    rltool("train", "-m", *ZERO3_TINY, "algo=erl", "trainer.max_steps=1", "seed=3", SHORT_DIRS,
           f"hydra.sweep.dir={tmp_path}")
    (row,) = list(csv.DictReader((tmp_path / "multirun_summary.csv").open()))
    assert row["status"] == "ok" and 0.0 <= float(row["eval/accuracy_flexible"]) <= 1.0
    assert (tmp_path / row["run_dir"] / "final" / "policy" / "model.safetensors").is_file()
    (step,) = [r for r in read_jsonl(tmp_path / row["run_dir"] / "metrics.jsonl") if "erl/gated_frac" in r]
    assert step["rollout/samples"] > 8  # attempts on both ranks plus reflections / retries
