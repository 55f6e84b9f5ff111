"""Bad input: one line naming the key and what is allowed, exit code 2, before any model loads."""
import pytest
import torch

from tests.integration.helpers import rltool

CASES = [
    (["algo.clip_eps_low=-0.1"], "algo.clip_eps_low=-0.1: must be >= 0"),
    (["trainer.micro_batch_size=5"], "trainer.micro_batch_size=5: must divide prompts_per_step*group_size"),
    (["trainer.group_size=1"], "trainer.group_size=1: must be >= 2"),
    (["reward.success=nope"], "reward.success='nope': unknown reward; valid:"),
    (["reward.terms=[{name: nope}]"], "reward.terms[0].name='nope': unknown reward"),
    (["actors.path=outputs/missing/final"], "actors.path='outputs/missing/final': no such directory"),
    (["algo.advantage=foo"], "algo.advantage='foo': unknown; valid: dr_grpo, grpo, reinforce_pp, rloo"),
    (["algo.kl_estimator=k9"], "algo.kl_estimator='k9': must be one of k1, k2, k3"),
    (["env.name=nope"], "env.name='nope': unknown environment 'nope'; valid: arithmetic, gsm8k"),
    (["rollout.engine=sglang"], "rollout.engine='sglang': must be one of vllm, hf"),
    (["actors.qlora=true", "hardware=cpu"], "actors.qlora=True: QLoRA needs a CUDA GPU"),
    (["actors.qlora=true", "actors.lora.r=16"], "actors.qlora=True: QLoRA needs a CUDA GPU (bitsandbytes 4-bit) and none"),
    (["hardware.vllm_kv_cache_gib=64"], "hardware.vllm_kv_cache_gib (CPU) / hardware.vllm_gpu_memory_utilization (GPU): engine needs 64.5 GiB"),
    (["actors.qlora=true", "hardware=gpu1"], "actors.lora.r=0: must be > 0 with actors.qlora=true"),
    (["hardware.num_processes=2"], "hardware.num_processes=2: more than one process trains with DeepSpeed ZeRO-3"),
    (["hardware.offload_optimizer=true"], "hardware.offload_optimizer=True: is a DeepSpeed ZeRO-3 option"),
    (["hardware=cpu_zero3", "rollout.engine=hf"], "rollout.engine=hf: HF generate does not run on ZeRO-3"),
    (["hardware=cpu_zero3", "trainer.prompts_per_step=3"],
     "trainer.prompts_per_step=3: must be divisible by hardware.num_processes=2"),
    (["hardware=cpu_zero3", "hardware.vllm_kv_cache_gib=16"],  # refused before accelerate starts any rank
     "engine needs 33.0 GiB of the"),
    (["algo.mismatch_cap=1"], "algo.mismatch_cap=1.0: must be > 1"),
    (["algo.mismatch_level=seq"], "algo.mismatch_level='seq': must be one of none, token, sequence"),
    (["algo=erl", "algo.erl.retry_template='{prompt} {attempt}'"], "algo.erl.retry_template"),
]


if not torch.cuda.is_available():  # the refusal is what is tested; on a GPU box the config is fine
    CASES.append((["hardware=gpu1"], "hardware=gpu1: asks for device=cuda but no GPU is visible"))
    CASES.append((["hardware=gpu8"], "hardware=gpu8: asks for device=cuda but no GPU is visible"))


@pytest.mark.parametrize("overrides,message", CASES)
def test_bad_value_is_one_line(overrides, message):
    proc = rltool("train", *overrides, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rltool: config error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("overrides,message", [
    (["algo.group_sise=3"], "Key 'group_sise' not in 'AlgoConfig'"),
    (["trainer.group_size=x"], "Value 'x' of type 'str' could not be converted to Integer"),
    (["algo=nope"], "Could not find 'algo/nope'"),
])
def test_composition_errors_name_the_key(overrides, message):
    proc = rltool("train", *overrides, check=False, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_group_option_lists_valid_options():
    proc = rltool("train", "algo=nope", check=False, timeout=120)
    for name in ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "erl"):
        assert f"\t{name}\n" in proc.stderr


def test_every_shipped_algo_validates():
    for algo in ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "erl"):
        proc = rltool("validate", f"algo={algo}", timeout=120)
        assert f"name: {algo}" in proc.stdout


def test_help_lists_groups():
    proc = rltool("train", "--help", timeout=120)
    for group in ("algo:", "env:", "actors:", "reward:", "hardware:"):
        assert group in proc.stdout


@pytest.mark.parametrize("overrides,batch", [(["hardware=cpu"], 4), (["hardware=cpu_zero3"], 4),
                                             (["hardware=cpu_zero3", "hardware.num_processes=6"], 6)])
def test_cpu_profiles_validate_with_a_dividing_batch(overrides, batch):
    proc = rltool("validate", *overrides, timeout=120)
    assert f"prompts_per_step: {batch}\n" in proc.stdout  # ${multiple_of:4,${hardware.num_processes}}
