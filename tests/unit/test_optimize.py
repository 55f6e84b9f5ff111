"""optimize() on a tiny random Llama: skipping rows without gradient changes nothing in the update."""
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from rltool import steps
from rltool.batch import collate
from rltool.config import AlgoConfig, RolloutConfig, TrainerConfig
from rltool.samples import Sample


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32)
    return LlamaForCausalLM(cfg)


def batch_with_zero_advantages():
    # six samples; rows 1, 2 and 4 have advantage 0 (an all-wrong group and a tie), row 5 is SFT-only
    advs = [1.0, 0.0, 0.0, -0.5, 0.0, 0.0]
    samples = [Sample(prompt_ids=[3, 4, 5][: 1 + i % 3], completion_ids=[6 + i, 7, 8, 9][: 2 + i % 3],
                      sample_logp=[-1.0] * 4, group=i // 2, reward=0.0, adv=a,
                      loss_weight=0.0 if i == 5 else 1.0, sft_weight=0.5 if i == 5 else 0.0)
               for i, a in enumerate(advs)]
    return collate(samples, pad_id=0)


def grads_after_optimize(agg: str, kl_coef: float = 0.0, skip: bool = True) -> tuple[list[torch.Tensor], dict]:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare gradients, keep weights
    cfg = SimpleNamespace(algo=AlgoConfig(name="t", agg=agg, kl_coef=kl_coef),
                          trainer=TrainerConfig(micro_batch_size=2), rollout=RolloutConfig(max_new_tokens=4))
    batch = batch_with_zero_advantages()
    if kl_coef:
        batch.ref_logp = torch.full_like(batch.mask, -2.0)
    with pytest.MonkeyPatch.context() as mp:
        if not skip:
            mp.setattr(steps, "contributing_rows", lambda b, kl: torch.arange(len(b)))
        metrics = steps.optimize(model, opt, batch, cfg)
    return [p.grad.clone() for p in model.parameters()], metrics


def test_contributing_rows():
    b = batch_with_zero_advantages()
    assert steps.contributing_rows(b, kl_in_loss=False).tolist() == [0, 3, 5]
    b.ref_logp = torch.zeros_like(b.mask)
    assert steps.contributing_rows(b, kl_in_loss=True).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("agg", ["grpo", "dr_grpo", "dapo"])
def test_skipping_zero_advantage_rows_gives_the_same_gradient(agg):
    skipped, m = grads_after_optimize(agg)
    full, m_full = grads_after_optimize(agg, skip=False)
    for a, b in zip(skipped, full):
        assert_close(a, b, atol=1e-7, rtol=1e-5)
    assert float(m["update/rows"]) == 3 and float(m_full["update/rows"]) == 6
    assert_close(m["loss/policy"], m_full["loss/policy"])
    assert any(g.abs().sum() > 0 for g in skipped)


def test_kl_in_loss_keeps_every_row():
    _, m = grads_after_optimize("grpo", kl_coef=0.1)
    assert float(m["update/rows"]) == 6


def test_nothing_to_learn_still_steps_on_zero_gradients():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = SimpleNamespace(algo=AlgoConfig(name="t"), trainer=TrainerConfig(micro_batch_size=2),
                          rollout=RolloutConfig(max_new_tokens=4))
    batch = batch_with_zero_advantages()
    batch.adv.zero_()
    batch.sft_weight.zero_()
    m = steps.optimize(model, opt, batch, cfg)
    assert float(m["update/rows"]) == 0
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.parameters())


def test_trimmed_drops_only_padding_columns():
    b = batch_with_zero_advantages()  # prompts 1..3 tokens, completions 2..4 tokens
    short = b.select(torch.tensor([0, 3]))  # prompt lens 1, 1; completion lens 2, 2
    t = short.trimmed()
    assert (t.prompt_width, t.mask.shape[1], t.input_ids.shape[1]) == (1, 2, 3)
    assert t.input_ids.tolist() == [[3, 6, 7], [3, 9, 7]]
    model = tiny_model()
    from rltool.actors.logprobs import completion_logp
    full, _ = completion_logp(model, short.input_ids, short.attention_mask, short.prompt_width)
    trim, _ = completion_logp(model, t.input_ids, t.attention_mask, t.prompt_width)
    assert_close(trim, full[:, :2], atol=1e-5, rtol=1e-5)
