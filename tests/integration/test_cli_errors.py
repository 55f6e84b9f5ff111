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
    (["actors.path=outputs/missing/final"], "actors.policy.path='outputs/missing/final': no such directory"),
    (["algo.advantage=foo"], "algo.advantage='foo': unknown; valid: dr_grpo, grpo, reinforce_pp, rloo"),
    (["algo.kl_estimator=k9"], "algo.kl_estimator='k9': unknown; valid: k1, k2, k3"),
    (["algo.agg=foo"], "algo.agg='foo': unknown; valid: bnpo, dapo, dr_grpo, grpo"),
    (["actors.path=./no-such-model"], "actors.policy.path='./no-such-model': no such directory (a local path; a hub id is org/name)"),
    (["actors.path=/no/such/model"], "actors.policy.path='/no/such/model': no such directory"),
    (["plugins=[no_such_plugin.py]"], "plugins[0]='no_such_plugin.py': no such file"),
    (["env.name=nope"], "env.name='nope': unknown environment 'nope'; valid: arithmetic, article_curriculum, collab, "),
    (["env=collab_arithmetic", "env.answer_from=bob"], "env.answer_from='bob': must be last or an actor (solver, checker)"),
    (["env=parallel_gsm8k", "env.drafter=x"], "env.drafter='x': not an actor; actors: policy"),
    (["env=collab_arithmetic", "actors.solver.trainable=false", "actors.checker.trainable=false"],
     "actors: every actor is frozen"),
    (["rollout.engine=sglang"], "rollout.engine='sglang': must be one of vllm, hf"),
    (["actors.qlora=true", "hardware=cpu"], "actors.policy.qlora=True: QLoRA needs a CUDA GPU"),
    (["actors.qlora=true", "actors.lora.r=16"], "actors.policy.qlora=True: QLoRA needs a CUDA GPU (bitsandbytes 4-bit) and none"),
    (["hardware.vllm_kv_cache_gib=64"], "hardware.vllm_kv_cache_gib (CPU) / hardware.vllm_gpu_memory_utilization (GPU): engine needs 64.5 GiB"),
    (["actors.qlora=true", "hardware=gpu1"], "actors.policy.lora.r=0: must be > 0 with qlora=true"),
    (["hardware.num_processes=2"], "hardware.num_processes=2: more than one process trains with DeepSpeed ZeRO-3"),
    (["hardware.offload_optimizer=true"], "hardware.offload_optimizer=True: is a DeepSpeed ZeRO-3 option"),
    (["hardware=cpu_zero3", "hardware.machine_rank=1"], "hardware.machine_rank=1: must be in [0, hardware.num_machines=1)"),
    (["hardware=cpu_zero3", "hardware.num_machines=3"], "hardware.num_machines=3: must be >= 1 and divide"),
    (["hardware=cpu_zero3", "hardware.main_process_port=70000"], "hardware.main_process_port=70000: must be a TCP port"),
    (["resume=outputs/no-such-run"], "resume=outputs/no-such-run: no such directory; expected a run directory"),
    (["hardware=cpu_zero3", "rollout.engine=hf"], "rollout.engine=hf: HF generate does not run on ZeRO-3"),
    (["hardware=cpu_zero3", "trainer.prompts_per_step=3"],
     "trainer.prompts_per_step=3: must be divisible by hardware.num_processes=2"),
    (["hardware=cpu_zero3", "hardware.vllm_kv_cache_gib=16"],  # refused before accelerate starts any rank
     "engine needs 33.0 GiB of the"),
    (["algo.mismatch_cap=1"], "algo.mismatch_cap=1.0: must be > 1"),
    (["algo.mismatch_level=seq"], "algo.mismatch_level='seq': must be one of none, token, sequence"),
    (["trainer.logprob_impl=foo"], "trainer.logprob_impl='foo': must be one of chunked, plain"),
    (["trainer.logprob_chunk_size=0"], "trainer.logprob_chunk_size=0: must be >= 1"),
    (["trainer.logger=[tensorboard, nope]"], "trainer.logger=['tensorboard', 'nope']: 'nope' is not a logger; valid:"),
    (["algo=erl", "algo.erl.retry_template='{prompt} {attempt}'"], "algo.erl.retry_template"),
    # encoder agents (algo=encoder_ppo): refused before the encoder loads
    (["algo=encoder_ppo", "actors=minilm_agent", "env=gsm8k"], "env.name='gsm8k': unknown text environment; valid: bandit_text,"),
    (["algo=encoder_ppo", "env=frozenlake_text"], "actors.path='embedded:smollm2-135m-instruct': not an embedded encoder"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=frozenlake_text", "env.map_size=5x5"],
     "env.map_size='5x5': must be one of 4x4, 8x8"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=taxi_text", "algo.ppo.gamma=1.5"], "algo.ppo.gamma=1.5: must be in (0, 1]"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=taxi_text", "algo.ppo.num_minibatches=3"],
     "algo.ppo.num_minibatches=3: must divide algo.ppo.num_steps x trainer.num_envs = 1024"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=taxi_text", "actors.encoder.trainable_layers=7"],
     "actors.encoder.trainable_layers=7: must be <= the encoder's 6 layers"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=taxi_text", "algo.ppo.value_loss=huber"],
     "algo.ppo.value_loss='huber': unknown for algo.loop=ppo; valid: clipped, mse"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=taxi_text", "actors.heads.feature_norm=layer"],
     "actors.policy.heads.feature_norm='layer': must be one of running, none"),
    (["rollout.multi_lora=true"], "rollout.multi_lora=True: needs trainable LoRA actors (actors.<name>.lora.r > 0)"),
    (["rollout.multi_lora=true", "actors.lora.r=8", "rollout.engine=hf"], "rollout.multi_lora=True: needs rollout.engine=vllm"),
    (["rollout.multi_lora=true", "actors.lora.r=1000"], "actors.policy.lora.r=1000: must be <= 512 with rollout.multi_lora"),
]


if not torch.cuda.is_available():  # train refuses what validate accepts; on a GPU box the config is fine
    CASES.append((["hardware=gpu1"], "hardware=gpu1: asks for device=cuda but no GPU is visible"))
    CASES.append((["hardware=gpu8"], "hardware=gpu8: asks for device=cuda but no GPU is visible"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_validate_plans_a_gpu_profile_on_a_machine_without_one(tmp_path):
    proc = rltool("validate", "hardware=gpu8", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert "plan: grpo on gsm8k" in proc.stdout and "(cuda, bfloat16, 8 processes, engine=vllm)" in proc.stdout
    assert "hardware=gpu8: asks for device=cuda but no GPU is visible here" in proc.stderr
    assert proc.stderr.strip().endswith("rltool: config OK") and not (tmp_path / "run").exists()


def test_help_exits_zero_with_the_commands():
    for flag in ("--help", "-h"):
        proc = rltool(flag, timeout=60)
        assert proc.stdout.startswith("usage: rltool {train,eval,validate}")
        assert all(word in proc.stdout for word in ("validate", "plugins=", "rltool.plugins"))
    assert rltool(check=False, timeout=60).returncode == 2  # no command: usage, exit 2


USER_CODE = """
from rltool.algos.kl import KL_ESTIMATORS
from rltool.envs import register_env
from rltool.envs.arithmetic import ArithmeticEnv
from rltool.rewards import reward

register_env("{env}")(type("PluginEnv", (ArithmeticEnv,), {{"name": "{env}"}}))
KL_ESTIMATORS.register("k_plugin")(KL_ESTIMATORS["k3"])

@reward("{reward}")
def says_yes(completion, example):
    return float("yes" in completion)
"""


def test_plugin_names_count_in_validation(tmp_path):
    """What a plugin registers is known before any check: its env, its reward, a KL estimator (the choice
    list is the registry's, not a copy in config.py)."""
    plugin = tmp_path / "my_task.py"
    plugin.write_text(USER_CODE.format(env="plugin_env", reward="plugin_yes"))
    proc = rltool("validate", f"plugins=[{plugin}]", "env.name=plugin_env", "reward.terms=[{name: plugin_yes}]",
                  "reward.success=plugin_yes", "algo.kl_estimator=k_plugin", timeout=120)
    assert "name: plugin_env" in proc.stdout and "kl_estimator: k_plugin" in proc.stdout


def test_reward_module_may_register_an_environment(tmp_path):
    """reward.module (the older hook) is imported with the plugins, before the env name is checked."""
    module = tmp_path / "rewards_and_env.py"
    module.write_text(USER_CODE.format(env="module_env", reward="module_yes"))
    proc = rltool("validate", f"reward.module={module}", "env.name=module_env", "reward.success=module_yes",
                  timeout=120)
    assert "name: module_env" in proc.stdout


@pytest.mark.parametrize("overrides,message", CASES)
def test_bad_value_is_one_line(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    proc = rltool("train", *overrides, f"hydra.run.dir={run_dir}", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert not run_dir.exists()  # a refused run leaves no empty run directory behind
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rltool: config error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("overrides,message", [
    (["algo.group_sise=3"], "Key 'group_sise' not in 'AlgoConfig'"),
    (["trainer.group_size=x"], "Value 'x' of type 'str' could not be converted to Integer"),
    (["algo=nope"], "algo=nope: unknown algo option; valid:"),
])
def test_composition_errors_name_the_key(overrides, message):
    proc = rltool("train", *overrides, check=False, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_encoder_agent_commands_validate():
    for env in ("frozenlake_text", "taxi_text", "blackjack_text", "cliffwalking_text", "bandit_text"):
        proc = rltool("validate", "algo=encoder_ppo", "actors=minilm_agent", f"env={env}", timeout=120)
        assert "loop: ppo" in proc.stdout and f"name: {env}" in proc.stdout and "sweep_metric: eval/reward" in proc.stdout


def test_every_shipped_algo_validates(tmp_path):
    for algo in ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "erl"):
        proc = rltool("validate", f"algo={algo}", f"hydra.run.dir={tmp_path / algo}", timeout=120)
        assert f"name: {algo}" in proc.stdout
        assert not (tmp_path / algo).exists()  # validate leaves no run directory


def test_help_lists_groups():
    proc = rltool("train", "--help", timeout=120)
    for group in ("algo:", "env:", "actors:", "reward:", "hardware:"):
        assert group in proc.stdout


@pytest.mark.parametrize("overrides,batch", [(["hardware=cpu"], 4), (["hardware=cpu_zero3"], 4),
                                             (["hardware=cpu_zero3", "hardware.num_processes=6"], 6)])
def test_cpu_profiles_validate_with_a_dividing_batch(overrides, batch):
    proc = rltool("validate", *overrides, timeout=120)
    assert f"prompts_per_step: {batch}\n" in proc.stdout  # ${multiple_of:4,${hardware.num_processes}}


@pytest.mark.parametrize("zero3_checkpoint,overrides,message", [
    (True, ["hardware=cpu"], "saved by a ZeRO-3 run, resumed as one process"),
    (False, ["hardware=cpu_zero3"], "saved by a one process run, resumed as ZeRO-3"),
])
def test_resume_across_launch_kinds_is_one_line(tmp_path, zero3_checkpoint, overrides, message):
    import torch

    step = tmp_path / "checkpoints" / "step_000002"  # what ckpt.save_checkpoint leaves, minus the weights
    (step / "model").mkdir(parents=True)
    (step / "model" / "config.json").write_text("{}")
    torch.save({"step": 2}, step / "trainer_state.pt")
    if zero3_checkpoint:
        (step / "zero").mkdir()
    else:
        torch.save({}, step / "optimizer.pt")
    (tmp_path / "checkpoints" / "latest").write_text("step_000002\n")
    proc = rltool("train", *overrides, f"resume={tmp_path}", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"rltool: config error: resume={tmp_path}: {message}"), proc.stderr


USER_REWARDS = '''
from rltool.rewards import reward

@reward("user_exact")
def exact(completion, answer):
    return float(completion.strip() == answer)

@reward("user_level")
def by_level(completion, level):      # `level` is no column of gsm8k's rows
    return float(level)

def reward_len(completions, **kwargs):  # TRL's signature, no decorator
    return [-abs(20 - len(completion)) for completion in completions]
'''


def test_reward_module_validates(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    proc = rltool("validate", f"reward.module='{path}'", "reward.terms=[{name: user_exact}, {name: reward_len, weight: 0.1}]",
                  "reward.success=user_exact", timeout=120)
    assert f"module: {path}" in proc.stdout and "name: reward_len" in proc.stdout


@pytest.mark.parametrize("text, overrides, message", [
    (None, ["reward.success=user_exact"], "reward.module='{path}': no such file"),
    ("def f(:\n", ["reward.success=user_exact"], "reward.module='{path}': SyntaxError at line 1: invalid syntax"),
    (USER_REWARDS, ["reward.success=user_exatc"], "reward.success='user_exatc': unknown reward; valid: format,"),
    (USER_REWARDS, ["reward.success=user_level"],
     "reward 'user_level' (by_level in my_rewards.py:8): parameter 'level' cannot be filled from the row; available: "
     "answer, completion, example, id, prompt, question"),
])
def test_reward_module_errors_are_one_line(tmp_path, text, overrides, message):
    path = tmp_path / "my_rewards.py"
    if text is not None:
        path.write_text(text)
    proc = rltool("validate", f"reward.module='{path}'", *overrides, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rltool: config error: "), proc.stderr
    assert message.format(path=path) in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
