"""optimize() on a tiny random Llama against an independent plain-torch reference of the step objective.

The reference below is written out here from the formulas in docs/algorithms.md: one
unpadded forward per row (no left padding, no position-id handling, no micro-batching, no row
skipping), log_softmax at the sampling temperature, the clipped surrogate, TIS on the policy term,
k3 KL, SFT at temperature 1, and each aggregation's normaliser. `optimize` must give the same
gradient for every aggregation and every micro-batch size.
"""
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from rltool import update
from rltool.actors.logprobs import completion_logp
from rltool.records import Sample, collate
from rltool.config import RolloutConfig, TrainerConfig
from rltool.schemas import algo_config

MAX_NEW = 5
TEMPERATURE = 0.7
CAP = 2.0


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32)
    return LlamaForCausalLM(cfg)


def six_samples() -> list[Sample]:
    """Rows 1, 2, 4 have advantage 0; row 4 is overlong-masked (loss_weight 0); row 5 is an SFT-only
    distill row; row 3 is a relabelled RAFT row. Engine log-probs differ from the trainer's, so TIS acts."""
    advs = [1.0, 0.0, 0.0, -0.5, 0.0, 0.0]
    samples = []
    for i, a in enumerate(advs):
        completion = [6 + i, 7, 8, 9][: 2 + i % 3]
        samples.append(Sample(prompt_ids=[3, 4, 5][: 1 + i % 3], completion_ids=completion,
                              sample_logp=[-3.0 - 0.5 * t for t in range(len(completion))], group=i // 2, reward=0.0,
                              adv=a, loss_weight={4: 0.0, 5: 0.0}.get(i, 1.0), sft_weight=0.5 if i == 5 else 0.0,
                              relabelled=i == 3))
    return samples


def config(agg: str, micro: int, kl_coef: float = 0.0, **algo) -> SimpleNamespace:
    return SimpleNamespace(algo=algo_config(name="t", agg=agg, kl_coef=kl_coef, mismatch_cap=CAP, **algo),
                           trainer=TrainerConfig(micro_batch_size=micro, grad_clip=1e9),
                           rollout=RolloutConfig(max_new_tokens=MAX_NEW, temperature=TEMPERATURE))


def optimize_grads(samples, cfg, ref_logp=None, old_logp=None) -> tuple[list[torch.Tensor], dict]:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare gradients, keep weights
    batch = collate(samples, pad_id=0)
    batch.ref_logp, batch.old_logp = ref_logp, old_logp
    metrics = update.optimize(model, opt, batch, cfg)
    return [p.grad.clone() for p in model.parameters()], metrics


# ---- the independent reference ----

def row_logps(model, s: Sample, temperature: float) -> torch.Tensor:
    """log pi_T of each completion token: one unpadded forward of prompt + completion."""
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1].float()  # (T, V)
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0]


def row_terms(model, s: Sample, kl_coef: float, ref: torch.Tensor | None, tis_on: bool, kl_is: bool = False):
    """(policy, kl, sft) per-token loss (T,) of one row, before aggregation."""
    logp = row_logps(model, s, TEMPERATURE)
    ratio = torch.exp(logp - logp.detach())  # one update: pi_old = pi, value 1
    a = s.adv
    policy = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    w = torch.exp(logp.detach() - torch.tensor(s.sample_logp)).clamp(max=CAP)  # TIS, truncate
    if tis_on and not s.relabelled:
        policy = policy * w
    policy = policy * s.loss_weight
    kl = torch.zeros_like(logp)
    if kl_coef:
        d = (ref - logp).clamp(-20, 20)
        kl = kl_coef * (torch.exp(d) - d - 1)
        if kl_is:  # TRL's bias correction: times pi/pi_old, value 1 here, gradient kl * grad logp
            kl = kl * torch.exp(logp - logp.detach())
    sft = -row_logps(model, s, 1.0) * s.sft_weight
    return policy, kl, sft


def reference_grads(samples, agg: str, micro: int, kl_coef: float = 0.0, ref_rows=None, tis_on=True, kl_is=False):
    model = tiny_model()
    rl_rows = [s.loss_weight > 0 for s in samples]
    sft_rows = [s.sft_weight > 0 for s in samples]
    terms = [row_terms(model, s, kl_coef, ref_rows[i] if ref_rows else None, tis_on, kl_is)
             for i, s in enumerate(samples)]
    rl = [p + k for p, k, _ in terms]  # (T_i,) each; only on rl rows
    sft = [f for _, _, f in terms]

    def aggregate(losses, rows):
        total = torch.zeros(())
        if agg == "grpo":  # mean over rows with trained tokens of each row's token mean
            return sum(l.mean() for l, r in zip(losses, rows) if r) / max(sum(rows), 1)
        if agg == "dapo":  # global token mean
            return sum(l.sum() for l, r in zip(losses, rows) if r) / max(sum(len(l) for l, r in zip(losses, rows) if r), 1)
        if agg == "dr_grpo":  # every row of the batch counts, times the constant length
            return sum(l.sum() for l, r in zip(losses, rows) if r) / (len(samples) * MAX_NEW)
        chunks = [range(i, min(i + micro, len(samples))) for i in range(0, len(samples), micro)]
        for c in chunks:  # bnpo: token mean within each micro-batch (batch order), mean over micro-batches
            n = sum(len(losses[i]) for i in c if rows[i])
            if n:
                total = total + sum(losses[i].sum() for i in c if rows[i]) / n
        return total / len(chunks)

    (aggregate(rl, rl_rows) + aggregate(sft, sft_rows)).backward()
    return [p.grad.clone() for p in model.parameters()]


def assert_same(grads, want):
    assert any(g.abs().sum() > 0 for g in want)
    for g, w in zip(grads, want):
        assert_close(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("agg", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("micro", [1, 3, 6])
def test_gradient_equals_the_plain_torch_objective(agg, micro):
    samples = six_samples()
    grads, m = optimize_grads(samples, config(agg, micro))
    assert_same(grads, reference_grads(samples, agg, micro))
    assert float(m["update/rows"]) == (6 if agg == "bnpo" else 3)  # rows 0, 3 (RL) and 5 (SFT) carry gradient


@pytest.mark.parametrize("agg,kl_is", [("grpo", False), ("bnpo", False), ("dr_grpo", False), ("dapo", False),
                                       ("grpo", True), ("dapo", True)])
def test_gradient_with_kl_in_the_loss(agg, kl_is):
    samples = six_samples()
    torch.manual_seed(1)
    ref_rows = [torch.randn(len(s.completion_ids)) - 2.0 for s in samples]
    ref = torch.zeros(6, max(len(s.completion_ids) for s in samples))
    for i, r in enumerate(ref_rows):
        ref[i, :len(r)] = r
    grads, m = optimize_grads(samples, config(agg, 2, kl_coef=0.1, kl_is_correction=kl_is), ref_logp=ref)
    assert_same(grads, reference_grads(samples, agg, 2, kl_coef=0.1, ref_rows=ref_rows, kl_is=kl_is))
    assert float(m["update/rows"]) == (6 if agg == "bnpo" else 5)  # KL acts on every row with RL tokens (not row 4)


def test_tis_weights_only_the_policy_term():
    # no advantage anywhere: only KL and SFT have gradients, and TIS on/off must not change them
    samples = six_samples()
    for s in samples:
        s.adv = 0.0
    ref = torch.full((6, 4), -2.0)
    on, _ = optimize_grads(samples, config("grpo", 2, kl_coef=0.1, mismatch_level="token"), ref_logp=ref)
    off, _ = optimize_grads(samples, config("grpo", 2, kl_coef=0.1, mismatch_level="none"), ref_logp=ref)
    assert_same(on, off)
    # and on the policy term it does act (the engine log-probs are far from the trainer's)
    pol_on, _ = optimize_grads(six_samples(), config("grpo", 2, mismatch_level="token"))
    pol_off, _ = optimize_grads(six_samples(), config("grpo", 2, mismatch_level="none"))
    assert max((a - b).abs().max() for a, b in zip(pol_on, pol_off)) > 1e-4
    assert_same(pol_off, reference_grads(six_samples(), "grpo", 2, tis_on=False))


def test_iterations_clip_a_token_whose_ratio_left_the_trust_region():
    # one row, two tokens, A=+1, pi_old = pi except token 0 where pi/pi_old = e^0.5 = 1.65 > 1.2:
    # token 0's loss is the constant -1.2 (clipped, zero gradient); token 1's is -r with r = 1.
    # grpo: (l_0 + l_1) / 2, so the gradient is that of -logp_1 / 2.
    s = Sample(prompt_ids=[3, 4], completion_ids=[9, 11], sample_logp=[0.0, 0.0], group=0, reward=1.0, adv=1.0)
    with torch.no_grad():
        old = row_logps(tiny_model(), s, TEMPERATURE)[None] - torch.tensor([[0.5, 0.0]])  # (1, 2)
    grads, m = optimize_grads([s], config("grpo", 1, iterations=2, mismatch_level="none"), old_logp=old)
    ref = tiny_model()
    (-row_logps(ref, s, TEMPERATURE)[1] / 2).backward()
    assert_same(grads, [p.grad for p in ref.parameters()])
    assert float(m["policy/clipfrac"]) == 0.5


def test_raft_row_gets_r2_times_coef_times_grad_log_pi_and_no_mismatch_weight():
    # A relabelled distill row (RAFT): adv = r2 = 1, loss_weight = coef = 0.5, engine log-probs from another
    # prompt (-3, -3.5, ...: TIS would weigh them ~2x). grpo with one row: loss = -coef * r2 * mean_t logp_t.
    s = Sample(prompt_ids=[3, 4], completion_ids=[9, 11, 12], sample_logp=[-3.0, -3.5, -4.0], group=0, reward=1.0,
               adv=1.0, loss_weight=0.5, relabelled=True)
    grads, m = optimize_grads([s], config("grpo", 1, mismatch_level="token"))
    ref = tiny_model()
    (-1.0 * 0.5 * row_logps(ref, s, TEMPERATURE).mean()).backward()
    assert_same(grads, [p.grad for p in ref.parameters()])
    assert float(m["mismatch/weight_mean"]) == 0.0  # no on-policy token: nothing in the mismatch metrics


def test_sft_term_is_cross_entropy_at_temperature_one():
    # one SFT row, sft_weight 0.5, sampler at T = 0.7. grpo: loss/sft = 0.5 * mean_t(-log pi_{T=1}(y_t)).
    s = Sample(prompt_ids=[3, 4], completion_ids=[9, 11, 12], sample_logp=[0.0] * 3, group=0, reward=1.0,
               adv=0.0, loss_weight=0.0, sft_weight=0.5, relabelled=True)
    grads, m = optimize_grads([s], config("grpo", 1))
    ref = tiny_model()
    ids = torch.tensor([[3, 4, 9, 11, 12]])
    logits = ref(input_ids=ids).logits[0, 1:4]  # (3, V): positions 1..3 predict tokens 9, 11, 12
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([9, 11, 12]))  # temperature 1, mean over tokens
    (0.5 * ce).backward()
    assert_close(m["loss/sft"], 0.5 * ce.detach(), atol=1e-6, rtol=1e-6)
    assert_same(grads, [p.grad for p in ref.parameters()])
    sharpened = torch.nn.functional.cross_entropy(logits.detach() / TEMPERATURE, torch.tensor([9, 11, 12]))
    assert abs(float(sharpened) - float(ce)) > 1e-4  # 100x the tolerance: the test tells the temperatures apart


def test_nothing_to_learn_still_steps_on_zero_gradients():
    samples = six_samples()
    for s in samples:
        s.adv, s.sft_weight = 0.0, 0.0
    grads, m = optimize_grads(samples, config("grpo", 2))
    assert float(m["update/rows"]) == 0
    assert all(g.abs().sum() == 0 for g in grads)


def test_trimmed_drops_only_padding_columns():
    b = collate(six_samples(), pad_id=0)  # prompts 1..3 tokens, completions 2..4 tokens
    short = b.select(torch.tensor([0, 3]))  # prompt lens 1, 1; completion lens 2, 2
    t = short.trimmed()
    assert (t.prompt_width, t.mask.shape[1], t.input_ids.shape[1]) == (1, 2, 3)
    assert t.input_ids.tolist() == [[3, 6, 7], [3, 9, 7]]
    model = tiny_model()
    full = completion_logp(model, short.input_ids, short.attention_mask, short.prompt_width).logp
    trim = completion_logp(model, t.input_ids, t.attention_mask, t.prompt_width).logp
    assert_close(trim, full[:, :2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("agg", ["grpo", "dapo"])
def test_multi_turn_row_trains_only_its_own_tokens_with_per_token_advantages(agg):
    # Row 0 is a 3-turn trajectory: the actor's turn (tokens 9, 11), another actor's turn (12, 13: mask 0),
    # the actor's turn again (14), with per-token advantages [0.5, 0.5, -, -, -1]. Row 1 is single-turn, A = 1.
    # With ratio 1 each trained token's loss is -A_t logp_t:
    #   grpo: ((-0.5 l0 - 0.5 l1 + 1.0 l4) / 3 + (-l'0 - l'1) / 2) / 2 rows
    #   dapo: (-0.5 l0 - 0.5 l1 + 1.0 l4 - l'0 - l'1) / 5 trained tokens
    multi = Sample(prompt_ids=[3, 4], completion_ids=[9, 11, 12, 13, 14], sample_logp=[-1.0] * 5, group=0,
                   reward=1.0, completion_mask=[1, 1, 0, 0, 1], token_adv=[0.5, 0.5, 7.0, 7.0, -1.0])
    single = Sample(prompt_ids=[5], completion_ids=[6, 7], sample_logp=[-1.0] * 2, group=1, reward=1.0, adv=1.0)
    grads, m = optimize_grads([multi, single], config(agg, 1, mismatch_level="none"))
    ref = tiny_model()
    l, l1 = row_logps(ref, multi, TEMPERATURE), row_logps(ref, single, TEMPERATURE)
    own = -0.5 * l[0] - 0.5 * l[1] + 1.0 * l[4]
    objective = (own / 3 + (-l1[0] - l1[1]) / 2) / 2 if agg == "grpo" else (own - l1[0] - l1[1]) / 5
    objective.backward()
    assert_same(grads, [p.grad for p in ref.parameters()])
    batch = collate([multi, single], pad_id=0)
    assert batch.mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 0, 0, 0]]
    assert batch.adv.tolist() == [[0.5, 0.5, 0.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0, 0.0]]
    assert batch.sample_logp[0].tolist() == [-1.0, -1.0, 0.0, 0.0, -1.0]


def test_ref_kl_probe_is_k3_of_the_engine_logps_against_the_base_on_the_first_rows():
    """trainer.ref_kl_rows: KL(policy || base) measured on the first n rows, with the engine's log-probs
    as the policy's; k3 = exp(ref - logp) - (ref - logp) - 1, averaged over those rows' tokens."""
    base, samples = tiny_model(), six_samples()
    cfg = config("grpo", micro=2)
    cfg.trainer = TrainerConfig(micro_batch_size=2, ref_kl_rows=3)
    got = update.ref_kl_probe(base, collate(samples, pad_id=0), cfg)["policy/ref_kl"]
    with torch.no_grad():
        d = torch.cat([row_logps(base, s, TEMPERATURE) - torch.tensor(s.sample_logp) for s in samples[:3]])
    assert abs(got - float((d.exp() - d - 1).mean())) < 1e-6
    assert got > 0.1  # the engine's made-up log-probs are far from the model's: a real distance
