"""The chunked log-prob path (never the (B, T, V) logits) against the plain path, its reference, and
against log_softmax + gather written out in plain torch. fp32, values and gradients to 1e-5."""
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from rltool import update
from rltool.actors.chunked_logp import ChunkedHeadLogp, lm_head
from rltool.actors.logprobs import completion_logp
from rltool.actors.lora import AdapterDisabled, add_adapter
from rltool.records import Sample, collate
from rltool.config import LoraConfig, RolloutConfig, TrainerConfig
from rltool.schemas import algo_config

TOL = dict(atol=1e-5, rtol=1e-5)


def tiny_model(tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=96, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    if not tied:  # a head that differs from the embedding, so a mix-up shows
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    return model


def samples() -> list[Sample]:
    # 6 rows: prompts 1..3 tokens (left-padded), completions 2..5 tokens (right-padded); rows 1 and 4 are SFT rows
    advs = [1.0, 0.0, -0.5, 0.7, 0.0, -1.2]
    return [Sample(prompt_ids=[3, 4, 5][: 1 + i % 3], completion_ids=[10 + 7 * i, 17, 28 + i, 9, 40][: 2 + i % 4],
                   sample_logp=[-1.0] * 5, group=i // 2, reward=0.0, adv=a,
                   loss_weight=0.0 if i in (1, 4) else 1.0, sft_weight=0.5 if i in (1, 4) else 0.0)
            for i, a in enumerate(advs)]


def logps_and_grads(model, impl: str, temperature: float, chunk_size: int = 4):
    """TokenLogps of the batch and the gradients of a fixed random combination of logp and logp_t1."""
    b = collate(samples(), pad_id=0)
    model.zero_grad(set_to_none=True)
    out = completion_logp(model, b.input_ids, b.attention_mask, b.prompt_width, temperature, with_entropy=True,
                          with_t1=True, impl=impl, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(1)
    w, w1 = torch.randn(out.logp.shape, generator=g), torch.randn(out.logp.shape, generator=g)  # (B, T)
    ((out.logp * w * b.mask).sum() + (out.logp_t1 * w1 * b.mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same(chunked, plain):
    (out_c, g_c), (out_p, g_p) = chunked, plain
    for field in ("logp", "entropy", "logp_t1"):
        assert_close(getattr(out_c, field), getattr(out_p, field), **TOL, msg=field)
    assert g_c.keys() == g_p.keys() and g_p
    for name in g_p:
        assert_close(g_c[name], g_p[name], **TOL, msg=name)


def test_head_function_equals_log_softmax_by_hand():
    # N=7 tokens, H=5, V=11, chunks of 3 (the last one has 1 row), temperature 0.7
    torch.manual_seed(0)
    h, w = torch.randn(7, 5, requires_grad=True), torch.randn(11, 5, requires_grad=True)
    y = torch.tensor([0, 3, 10, 4, 4, 7, 1])
    out = ChunkedHeadLogp.apply(h, w, y, 0.7, 3, True, True)  # (7, 3)
    a, a1 = torch.randn(7), torch.randn(7)
    (out[:, 0] @ a + out[:, 1] @ a1).backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None

    logits = h @ w.T  # (7, 11)
    lsm = torch.log_softmax(logits / 0.7, -1)
    logp = lsm.gather(-1, y[:, None]).squeeze(-1)  # log p_T(y)
    logp_t1 = torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)
    entropy = -(lsm.exp() * lsm).sum(-1)  # H(p_T) = -sum p log p
    assert_close(out[:, 0], logp, **TOL)
    assert_close(out[:, 1], logp_t1, **TOL)
    assert_close(out[:, 2], entropy.detach(), **TOL)
    (logp @ a + logp_t1 @ a1).backward()
    assert_close(grads[0], h.grad, **TOL)
    assert_close(grads[1], w.grad, **TOL)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_plain(tied, temperature):
    model = tiny_model(tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert_same(logps_and_grads(model, "chunked", temperature), logps_and_grads(model, "plain", temperature))
    # one chunk holding every token, and chunks of one token: the same numbers
    assert_same(logps_and_grads(model, "chunked", temperature, chunk_size=1000),
                logps_and_grads(model, "chunked", temperature, chunk_size=1))


def test_chunked_equals_plain_with_lora_and_its_reference():
    model = add_adapter(tiny_model(), LoraConfig(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a fresh adapter has B = 0
    assert lm_head(model) is model.get_base_model().lm_head
    chunked, plain = logps_and_grads(model, "chunked", 0.7), logps_and_grads(model, "plain", 0.7)
    assert_same(chunked, plain)
    assert all("lora_" in n for n in plain[1])  # only the adapter has gradients
    ref = AdapterDisabled(model)  # the KL reference under LoRA: the base, no second copy
    b = collate(samples(), pad_id=0)
    with torch.no_grad():
        ref_c, ref_p = (completion_logp(ref, b.input_ids, b.attention_mask, b.prompt_width, 0.7, impl=impl,
                                        chunk_size=4).logp for impl in ("chunked", "plain"))
    assert_close(ref_c, ref_p, **TOL)
    assert not torch.allclose(ref_c, chunked[0].logp.detach(), atol=1e-4)


def test_heads_the_chunked_path_cannot_stand_in_for():
    model = tiny_model()
    model.config.final_logit_softcapping = 30.0  # Gemma-2: logits transformed after the head
    assert lm_head(model) is None
    lora_on_head = add_adapter(tiny_model(tied=False), LoraConfig(r=2, target_modules="lm_head"))
    assert lm_head(lora_on_head) is None  # a LoraLayer: its weight alone is not the head
    b = collate(samples(), pad_id=0)
    with torch.no_grad():  # falls back to the plain path
        got = completion_logp(lora_on_head, b.input_ids, b.attention_mask, b.prompt_width, impl="chunked").logp
        want = completion_logp(lora_on_head, b.input_ids, b.attention_mask, b.prompt_width, impl="plain").logp
    assert torch.equal(got, want)


def optimize_once(agg: str, impl: str):
    model = tiny_model(tied=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare gradients
    cfg = SimpleNamespace(algo=algo_config(name="t", agg=agg, kl_coef=0.1),
                          trainer=TrainerConfig(micro_batch_size=4, logprob_impl=impl, logprob_chunk_size=5),
                          rollout=RolloutConfig(max_new_tokens=5, temperature=0.7))
    batch = collate(samples(), pad_id=0)
    batch.ref_logp = torch.full_like(batch.mask, -2.0)
    m = update.optimize(model, opt, batch, cfg)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, m


@pytest.mark.parametrize("agg", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_optimize_chunked_equals_plain(agg):
    """Every aggregation through `optimize`: clipped policy term, k3 KL, SFT rows at temperature 1."""
    (g_c, m_c), (g_p, m_p) = optimize_once(agg, "chunked"), optimize_once(agg, "plain")
    assert "loss/sft" in m_p and "loss/kl" in m_p
    for k in m_p:
        assert_close(torch.as_tensor(m_c[k]), torch.as_tensor(m_p[k]), **TOL, msg=k)
    for name in g_p:
        assert_close(g_c[name], g_p[name], **TOL, msg=name)
    assert any(g.abs().sum() > 0 for g in g_p.values())
