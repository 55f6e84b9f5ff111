"""Memory estimate: parameter counts from a config, per-part sizes, and the refusal of what cannot fit."""
import json
import math
from types import SimpleNamespace

import pytest

from rltool.config import ActorConfig, Config, ConfigError, HardwareConfig, LoraConfig, RolloutConfig, TrainerConfig
from rltool.plan import GIB, Shape, memory_plan
from rltool.schemas import algo_config, env_config

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}
TINY = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 10}


def test_smollm2_has_134_5m_params():
    # per block: q 576*576 + k,v 2*576*192 + o 576*576 + mlp 3*576*1536 + norms 2*576 = 3,540,096
    # x 30 blocks + tied embedding 49152*576 + final norm 576 = 134,515,008
    assert Shape.from_dict(SMOLLM2).params() == 134_515_008


def test_embedded_model_matches_its_real_parameter_count():
    from rltool.actors.embedded import materialize
    from safetensors import safe_open

    path = materialize()
    shape = Shape.from_dict(json.loads((path / "config.json").read_text()))
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        real = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert shape.params() == real  # the file holds the tied embedding once


def test_tiny_counts_by_hand():
    # head_dim 2, q 4, kv 2: block = 4*4 + 2*4*2 + 4*4 + 3*4*8 + 2*4 = 16 + 16 + 16 + 96 + 8 = 152
    # 2 blocks 304 + untied embeddings 2*10*4 = 80 + final norm 4 -> 388
    s = Shape.from_dict(TINY)
    assert s.params() == 388
    # LoRA r=1 per block: (4+4) + 2*(4+2) + (4+4) + 2*(4+8) + (8+4) = 8 + 12 + 8 + 24 + 12 = 64; 2 blocks -> 128
    assert s.lora_params(1) == 128


def cfg(**over):
    """The fields the plan reads; `actors=` one ActorConfig (the policy) or a name -> ActorConfig dict."""
    c = SimpleNamespace(trainer=TrainerConfig(micro_batch_size=2), rollout=RolloutConfig(max_new_tokens=4, max_prompt_len=4),
                        actors=ActorConfig(path="m"), algo=algo_config(name="t"), env=SimpleNamespace(name="e"),
                        hardware=HardwareConfig(name="cpu", vllm_kv_cache_gib=1))
    for k, v in over.items():
        setattr(c, k, v)
    if isinstance(c.actors, ActorConfig):
        c.actors = {"policy": c.actors}
    for name, actor in c.actors.items():
        actor.name = name
    c.lead_actor = next(iter(c.actors.values()))
    c.actor_algo = lambda name: c.algo
    c.needs_reference = lambda name: Config.needs_reference(c, name)
    return c


def test_parts_by_hand_fp32_cpu():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    _, gib = memory_plan(cfg(trainer=TrainerConfig(micro_batch_size=2, logprob_impl="plain")), hw,
                         Shape.from_dict(TINY), 64 * GIB)
    to_bytes = {k: round(v * GIB) for k, v in gib.items()}
    # weights 388*4, grads 388*4, Adam 388*8; activations: 2*(4+4) tokens * 2 layers * (10*4 + 4*8)*4 bytes = 9216
    # logits 2*4*10*4*3 = 960; engine 1 GiB + 388*4
    assert to_bytes == {"weights": 1552, "grads": 1552, "optimizer": 3104, "activations": 9216, "logits": 960,
                        "reference": 0, "engine": GIB + 1552}


def test_a_full_reference_copy_for_a_kl_term_or_a_kl_measurement():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    for over in ({"algo": algo_config(name="t", kl_coef=0.1)}, {"trainer": TrainerConfig(micro_batch_size=2, ref_kl_rows=8)}):
        assert round(memory_plan(cfg(**over), hw, Shape.from_dict(TINY), 64 * GIB)[1]["reference"] * GIB) == 388 * 4


def test_logits_follow_the_logprob_path():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    logits = {impl: round(memory_plan(cfg(trainer=TrainerConfig(micro_batch_size=2, logprob_impl=impl,
                                                                logprob_chunk_size=3)),
                                      hw, Shape.from_dict(TINY), 64 * GIB)[1]["logits"] * GIB)
              for impl in ("plain", "chunked")}
    # plain: 2*4 tokens * V 10 * 4 bytes * 3 copies = 960; chunked: 3 tokens * 10 * 4 * 3 = 360 + fp32 head grad 10*4*4 = 160
    assert logits == {"plain": 960, "chunked": 520}


def test_lora_trains_the_adapter_only_and_needs_no_reference_copy():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    c = cfg(actors=ActorConfig(path="m", lora=LoraConfig(r=1)), algo=algo_config(name="t", kl_coef=0.1))
    _, gib = memory_plan(c, hw, Shape.from_dict(TINY), 64 * GIB)
    assert round(gib["grads"] * GIB) == 128 * 4 and round(gib["optimizer"] * GIB) == 128 * 8 and gib["reference"] == 0


def test_engines_that_actors_share_are_counted_once():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    lora = LoraConfig(r=1)
    actors = lambda: {"a": ActorConfig(path="m", lora=lora), "b": ActorConfig(path="m", lora=lora),  # noqa: E731
                      "c": ActorConfig(path="other", lora=lora), "j": ActorConfig(path="m", trainable=False),
                      "k": ActorConfig(path="m", trainable=False)}
    one_engine = GIB + 388 * 4  # 1 GiB KV + the TINY model's fp32 weights
    for multi_lora, engines in ((False, 4), (True, 3)):  # a, b, c each + one frozen; multi-LoRA: a and b share
        c = cfg(actors=actors(), rollout=RolloutConfig(max_new_tokens=4, max_prompt_len=4, multi_lora=multi_lora))
        _, gib = memory_plan(c, hw, {n: Shape.from_dict(TINY) for n in c.actors}, 64 * GIB)
        assert round(gib["engine"] * GIB) == engines * one_engine, multi_lora


def test_zero3_shards_weights_grads_and_optimizer():
    hw = SimpleNamespace(dtype="bfloat16", num_processes=8, device="cuda")
    c = cfg(hardware=HardwareConfig(name="gpu8", zero_stage=3, num_processes=8, vllm_gpu_memory_utilization=0.5))
    _, gib = memory_plan(c, hw, Shape.from_dict(TINY), 80 * GIB)
    # bf16: weights 388*2/8 = 97, grads 97, optimizer 388*(8+4)/8 = 582; engine 0.5 * 80 GiB
    assert [round(gib[k] * GIB) for k in ("weights", "grads", "optimizer")] == [97, 97, 582]
    assert gib["engine"] == 40


def test_refuses_what_cannot_fit_naming_the_keys():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    with pytest.raises(ConfigError, match=r"^hardware.vllm_kv_cache_gib .*: engine needs 1.5 GiB of the ~3.5 GiB"):
        # 135M fp32: weights 0.5, grads 0.5, Adam 1.0, engine 1 GiB KV + 0.5 weights: the engine is the biggest part
        memory_plan(cfg(), hw, Shape.from_dict(SMOLLM2), 2 * GIB)
    c = cfg(hardware=HardwareConfig(name="cpu", vllm_kv_cache_gib=0))
    with pytest.raises(ConfigError, match=r"^actors.lora.r=16: optimizer needs 1.0 GiB of the ~2.5"):
        memory_plan(c, hw, Shape.from_dict(SMOLLM2), 2 * GIB)


def test_activations_only_warn():
    hw = SimpleNamespace(dtype="float32", num_processes=1, device="cpu")
    c = cfg(trainer=TrainerConfig(micro_batch_size=64), rollout=RolloutConfig(max_new_tokens=4096, max_prompt_len=4096))
    line, _ = memory_plan(c, hw, Shape.from_dict(SMOLLM2), 24 * GIB)
    assert "warning: worst-case activations may not fit" in line


def test_batch_plan_splits_the_step_over_ranks():
    from rltool.plan import batch_plan

    cfg = SimpleNamespace(algo=algo_config(name="grpo", iterations=2), env=env_config(name="gsm8k"),
                          actors={"policy": ActorConfig(path="embedded:smollm2-135m-instruct")},
                          trainer=TrainerConfig(prompts_per_step=4, group_size=8, micro_batch_size=4, max_steps=10),
                          rollout=RolloutConfig(max_new_tokens=100, max_prompt_len=156))
    cfg.lead_actor = cfg.actors["policy"]
    text = batch_plan(cfg, SimpleNamespace(device="cpu", dtype="float32", num_processes=2))
    assert "2 processes" in text and "4 x group 8 = 32 completions/step" in text
    assert "per rank 16 completions in 4 micro-batches of 4 (accumulation steps per optimizer step: 4" in text
    assert "optimizer steps per rollout 2; max tokens/step 8,192" in text  # 32 x (100 + 156)
