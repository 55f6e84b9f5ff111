"""LoRA on a tiny random Llama with tied embeddings (as SmolLM2): merged weights for vLLM, the
adapter-off reference, checkpoints (merged model/ + adapter/) and an exact resume."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rltool import update
from rltool.actors.embedded import materialize
from rltool.actors.load import load_policy, load_reference
from rltool.actors.logprobs import completion_logp
from rltool.actors.lora import AdapterDisabled, add_adapter, is_peft, merged_named_weights, named_weights_for_engine
from rltool.records import Sample, collate
from rltool.ckpt import actor_dir, adapter_dir, load_optimizer, model_dir, save_checkpoint, save_final
from rltool.config import ActorConfig, ConfigError, LoraConfig, RolloutConfig, TrainerConfig
from rltool.schemas import algo_config

IDS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 6, 3]])  # (B=2, T=6)
MASK = torch.ones_like(IDS)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def lora_model(r: int = 4, nonzero_b: bool = True, **kw):
    model = add_adapter(tiny_model(), LoraConfig(r=r, alpha=8, **kw))
    if nonzero_b:  # a fresh adapter has B = 0, so nothing would differ from the base
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits  # (B, T, V)


def train_step(model, opt):
    model(input_ids=IDS, attention_mask=MASK, labels=IDS).loss.backward()
    opt.step()
    opt.zero_grad()


def test_merged_weights_equal_merge_and_unload():
    model = lora_model()
    merged = list(named_weights_for_engine(model))
    reference = copy.deepcopy(model).merge_and_unload()
    expected = list(reference.named_parameters(remove_duplicate=False))
    assert [n for n, _ in merged] == [n for n, _ in expected]
    assert [n for n, _ in merged] == [n for n, _ in tiny_model().named_parameters(remove_duplicate=False)]
    assert "lm_head.weight" in dict(merged)  # tied duplicate kept: vLLM-CPU holds its own lm_head
    for (name, w), (_, w_ref) in zip(merged, expected):
        assert_close(w, w_ref, atol=1e-6, rtol=0, msg=name)
    base = dict(tiny_model().named_parameters())
    assert not torch.equal(dict(merged)["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    # The live weights are untouched: no merge/unmerge in place.
    assert torch.equal(model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight,
                       base["model.layers.0.self_attn.q_proj.weight"])


def test_fresh_adapter_gives_the_base_weights():
    merged = dict(named_weights_for_engine(lora_model(nonzero_b=False)))
    base = dict(tiny_model().named_parameters(remove_duplicate=False))
    assert merged.keys() == base.keys()
    for name, w in base.items():
        assert torch.equal(merged[name], w), name


def test_plain_model_pushes_its_parameters():
    model = tiny_model()
    assert not is_peft(model)
    got = list(named_weights_for_engine(model))
    assert [(n, id(p)) for n, p in got] == [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)]


def test_target_modules_list():
    model = lora_model(target_modules="q_proj, v_proj")
    wrapped = {n.rsplit(".", 3)[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "v_proj"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if "lora_" in n}


def test_adapter_disabled_is_the_base_model():
    model = lora_model()
    ref = AdapterDisabled(model)
    base_logits = logits(tiny_model())
    assert not torch.allclose(logits(model), base_logits, atol=1e-3)
    # completion_logp's call: input_ids, attention_mask, position_ids, logits_to_keep, use_cache
    with torch.no_grad():
        ref_logp = completion_logp(ref, IDS, MASK, prompt_width=2).logp
        base_logp = completion_logp(tiny_model(), IDS, MASK, prompt_width=2).logp
    assert_close(ref_logp, base_logp, atol=1e-6, rtol=0)
    assert_close(ref(input_ids=IDS, attention_mask=MASK).logits, base_logits, atol=1e-6, rtol=0)
    # disable_adapter() clears requires_grad on the adapter; leaving it must restore it for the update.
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_load_policy_and_reference(tmp_path):
    tiny_model().save_pretrained(tmp_path / "base")
    base = str(tmp_path / "base")
    full = load_policy(ActorConfig(path=base), "float32", base_dir=base)
    assert not is_peft(full) and all(p.requires_grad for p in full.parameters())
    assert not isinstance(load_reference(full, base, "float32"), AdapterDisabled)

    cfg = ActorConfig(path=base, lora=LoraConfig(r=4))
    model = load_policy(cfg, "float32", base_dir=base)
    assert is_peft(model) and model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert isinstance(load_reference(model, base, "float32"), AdapterDisabled)


def actor(model, tokenizer, optimizer=None, scheduler=None):
    """What the checkpoint functions read of a trainable actor (rltool.actors.actor.Actor)."""
    return SimpleNamespace(name="policy", model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler)


def test_checkpoint_holds_merged_model_and_adapter_and_resumes_exactly(tmp_path, tokenizer):
    model = lora_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train_step(model, opt)
    step = save_checkpoint(tmp_path, 1, actors=[actor(model, tokenizer, opt, sched)],
                           trainer_state={"step": 1}, config_yaml="seed: 0\n", keep_last=2)
    ckpt = actor_dir(step, "policy")

    # model/: a plain HF model equal to the merged weights, tied lm_head included.
    plain = AutoModelForCausalLM.from_pretrained(model_dir(ckpt))
    assert not hasattr(plain, "peft_config") and plain.lm_head.weight is plain.model.embed_tokens.weight
    merged = dict(merged_named_weights(model, remove_duplicate=False))
    for name, p in plain.named_parameters(remove_duplicate=False):
        assert_close(p, merged[name], atol=0, rtol=0, msg=name)
    assert_close(logits(plain), logits(model), atol=1e-5, rtol=0)

    # adapter/ onto a fresh base: the same model, and with the optimizer state the next step is identical.
    tiny_model().save_pretrained(tmp_path / "base")  # actors.path
    base = str(tmp_path / "base")
    # lora.r is 0 in this config: on resume the checkpoint's adapter/ decides.
    restored = load_policy(ActorConfig(path=base), "float32", base_dir=base, resume_from=ckpt)
    assert is_peft(restored)
    assert_close(logits(restored), logits(model), atol=0, rtol=0)
    opt2 = torch.optim.AdamW([p for p in restored.parameters() if p.requires_grad], lr=1e-2)
    load_optimizer(ckpt, opt2)
    train_step(model, opt)
    train_step(restored, opt2)
    for (name, p), p2 in zip(model.named_parameters(), restored.parameters()):
        assert_close(p2, p, atol=0, rtol=0, msg=name)


def test_full_finetune_checkpoint_has_no_adapter(tmp_path, tokenizer):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = save_checkpoint(tmp_path, 1, actors=[actor(model, tokenizer, opt, sched)],
                           trainer_state={"step": 1}, config_yaml="seed: 0\n", keep_last=2)
    ckpt = actor_dir(step, "policy")
    assert adapter_dir(ckpt) is None and (model_dir(ckpt) / "model.safetensors").is_file()
    # lora.r=4 now, but the checkpoint is a full fine-tune: it resumes as one (its optimizer state fits that)
    resumed = load_policy(ActorConfig(path="unused", lora=LoraConfig(r=4)), "float32", base_dir="unused",
                          resume_from=ckpt)
    assert not is_peft(resumed)


def test_final_is_a_plain_merged_model(tmp_path, tokenizer):
    model = lora_model()
    final = save_final(tmp_path, [actor(model, tokenizer)]) / "policy"
    assert not list(final.glob("adapter*"))
    assert_close(logits(AutoModelForCausalLM.from_pretrained(final)), logits(model), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw, key", [(dict(alpha=0), "actors.lora.alpha"), (dict(dropout=1.0), "actors.lora.dropout"),
                                     (dict(dropout=-0.1), "actors.lora.dropout"),
                                     (dict(target_modules=""), "actors.lora.target_modules"),
                                     (dict(target_modules="q_proj,"), "actors.lora.target_modules")])
def test_lora_config_errors(kw, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        LoraConfig(r=8, **kw)


def test_loop_phases_with_kl_update_only_the_adapter():
    """compute_logprobs (adapter-off reference) + optimize, as train() runs them with LoRA and KL on."""
    model = lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    cfg = SimpleNamespace(algo=algo_config(name="t", kl_coef=0.1, iterations=2),
                          trainer=TrainerConfig(micro_batch_size=2), rollout=RolloutConfig(max_new_tokens=4))
    samples = [Sample(prompt_ids=[3, 4], completion_ids=[6 + i, 7, 8], sample_logp=[-1.0] * 3, group=0,
                      reward=float(i), adv=float(i) - 1.5) for i in range(4)]
    batch = update.compute_logprobs(model, load_reference(model, "unused", "float32"), collate(samples, pad_id=0), cfg)
    base_logp = update.logp_no_grad(tiny_model(), batch, cfg)
    assert_close(batch.ref_logp, base_logp, atol=1e-6, rtol=0)
    assert not torch.allclose(batch.old_logp, base_logp, atol=1e-4)  # the policy is not the reference
    m = update.optimize(model, opt, batch, cfg)
    assert float(m["loss/kl"]) > 0 and torch.isfinite(m["policy/grad_norm"])
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != ("lora_" in n), n  # adapter moved, base did not


def test_multi_lora_engine_rank_is_the_smallest_vllm_accepts():
    from rltool.engines.lora_engine import engine_lora_rank

    # vLLM's max_lora_rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512
    assert [engine_lora_rank(r) for r in (1, 2, 8, 9, 16, 300, 320, 321, 512)] == [1, 8, 8, 16, 16, 320, 320, 512, 512]
