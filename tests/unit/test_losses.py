import math

import pytest
import torch
from torch.testing import assert_close

from rltool.algos.losses import AGG_MODES, POLICY_LOSSES, LossParams, StepCounts, agg_loss, sft_loss

TESTED_LOSSES = {"clip"}
TESTED_AGG = {"grpo", "bnpo", "dr_grpo", "dapo"}


def test_every_loss_and_agg_mode_has_a_hand_computed_test():
    assert set(POLICY_LOSSES.names()) == TESTED_LOSSES
    assert set(AGG_MODES) == TESTED_AGG


def log(*ratios):
    return torch.tensor(ratios).log()


def test_clip_token_level():
    # old_logp = 0, so ratio = exp(logp). eps 0.2 -> clip range [0.8, 1.2].
    # row 0, A=+1: r=1.0 -> -1; r=1.5 -> -min(1.5, 1.2) = -1.2 (clipped); r=0.5 -> -min(0.5, 0.8) = -0.5
    # row 1, A=-2: r=1.1 -> -min(-2.2, -2.2) = 2.2; r=0.7 -> -min(-1.4, -1.6) = 1.6 (clipped);
    #              r=2.0 -> -min(-4, -2.4) = 4.0 (masked out of the metrics)
    logp = torch.stack([log(1.0, 1.5, 0.5), log(1.1, 0.7, 2.0)])  # (2, 3)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, metrics = POLICY_LOSSES["clip"](logp, torch.zeros_like(logp), adv, mask, LossParams())
    assert_close(loss, torch.tensor([[-1.0, -1.2, -0.5], [2.2, 1.6, 4.0]]))
    # clipfrac: 2 clipped of 5 masked tokens = 0.4
    # ratio: (1 + 1.5 + 0.5 + 1.1 + 0.7) / 5 = 0.96
    # approx_kl: 0.5 * (0 + ln1.5^2 + ln0.5^2 + ln1.1^2 + ln0.7^2) / 5
    #          = 0.5 * (0 + 0.164402 + 0.480453 + 0.009084 + 0.127217) / 5 = 0.078116
    assert_close(metrics["policy/clipfrac"], torch.tensor(0.4))
    assert_close(metrics["policy/ratio"], torch.tensor(0.96))
    assert_close(metrics["policy/approx_kl"], torch.tensor(0.078116))
    assert all(not m.requires_grad for m in metrics.values())


def test_clip_higher_is_asymmetric():
    # ratio 1.25, A=+1: eps_high 0.28 -> 1.25 < 1.28, unclipped, loss -1.25; eps_high 0.2 -> -1.2
    logp, old_logp = log(1.25)[None], torch.zeros(1, 1)  # (1, 1)
    adv, mask = torch.ones(1), torch.ones(1, 1)
    wide, _ = POLICY_LOSSES["clip"](logp, old_logp, adv, mask, LossParams(eps_low=0.2, eps_high=0.28))
    narrow, _ = POLICY_LOSSES["clip"](logp, old_logp, adv, mask, LossParams(eps_low=0.2, eps_high=0.2))
    assert_close(wide, torch.tensor([[-1.25]]))
    assert_close(narrow, torch.tensor([[-1.2]]))
    # eps_low acts below: ratio 0.75, A=-1, eps_low 0.2 -> -min(-0.75, -0.8) = 0.8; eps_low 0.3 -> 0.75
    low = log(0.75)[None]
    for eps_low, want in ((0.2, 0.8), (0.3, 0.75)):
        loss, _ = POLICY_LOSSES["clip"](low, old_logp, -adv, mask, LossParams(eps_low=eps_low))
        assert_close(loss, torch.tensor([[want]]))


@pytest.mark.parametrize(
    "ratio, adv, grad",
    [
        # after a few PPO epochs the ratio has left [0.8, 1.2]:
        (1.5, 1.0, 0.0),  # pushed up enough already: clipped, no gradient
        (0.5, -1.0, 0.0),  # pushed down enough already: clipped, no gradient
        (0.5, 1.0, -0.5),  # moved the wrong way: unclipped, d(-r A)/dlogp = -r A = -0.5
        (1.5, -1.0, 1.5),  # moved the wrong way: unclipped, -r A = 1.5
    ],
)
def test_clip_gradient_vanishes_only_on_the_helpful_side(ratio, adv, grad):
    logp = log(ratio)[None].requires_grad_()  # (1, 1)
    loss, _ = POLICY_LOSSES["clip"](logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), LossParams())
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[grad]]))


def test_gspo_sequence_ratio():
    # row 0: masked log-ratios [ln2, 0] (third token masked, its ln5 is ignored)
    #   s = exp((ln2 + 0) / 2) = sqrt2 = 1.414214, A=+1 -> clipped to 1.2, loss -1.2 on every token
    # row 1: log-ratios [ln0.5, ln2, 0]: mean 0, s = 1, A=-1 -> loss 1 on every token, unclipped
    logp = torch.stack([log(2.0, 1.0, 5.0), log(0.5, 2.0, 1.0)]).requires_grad_()  # (2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    p = LossParams(ratio_level="sequence")
    loss, metrics = POLICY_LOSSES["clip"](logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask, p)
    assert_close(loss, torch.tensor([[-1.2, -1.2, -1.2], [1.0, 1.0, 1.0]]))
    # clipfrac: 2 of 5 masked tokens; ratio: (2 * 1.414214 + 3 * 1) / 5 = 1.165685
    assert_close(metrics["policy/clipfrac"], torch.tensor(0.4))
    assert_close(metrics["policy/ratio"], torch.tensor(1.165685))
    # gradient per token: clipped row 0 -> 0; row 1 -> -A * s = 1 on each token (GSPO-token)
    (loss * mask).sum().backward()
    assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))


def test_gspo_equals_token_level_when_log_ratio_is_constant_per_sequence():
    torch.manual_seed(0)
    c = torch.tensor([[0.1], [-0.3], [0.02]])  # (3, 1) per-sequence log-ratio
    old_logp = -torch.rand(3, 4)  # (3, 4)
    adv, mask = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    out = {}
    for level in ("token", "sequence"):
        logp = (old_logp + c).requires_grad_()  # (3, 4)
        loss, metrics = POLICY_LOSSES["clip"](logp, old_logp, adv, mask, LossParams(ratio_level=level))
        (loss * mask).sum().backward()
        out[level] = (loss.detach(), logp.grad, metrics)
    (tl, tg, tm), (sl, sg, sm) = out["token"], out["sequence"]
    assert_close(sl, tl)
    assert_close(sg, tg)
    assert_close(sm, tm)


def test_ratio_level_is_validated():
    with pytest.raises(ValueError, match="sequence, token"):
        LossParams(ratio_level="seq")


def test_sft_loss():
    assert_close(sft_loss(torch.tensor([[-0.5, -2.0]])), torch.tensor([[0.5, 2.0]]))


# Two micro-batches of one optimizer step (T = max_len = 3):
#   mb1 loss [[1,2,3],[4,5,6]] mask [[1,1,0],[1,1,1]];  mb2 loss [[2,4,6],[9,9,9]] mask [[1,0,0],[0,0,0]]
# totals: num_seqs 3 (rows with a trained token), num_rows 4 (the overlong-masked row too),
# num_tokens 2 + 3 + 1 = 6, masked sums 3 + 15 = 18 and 2.
MICRO = [
    (torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[1.0, 1, 0], [1, 1, 1]])),
    (torch.tensor([[2.0, 4, 6], [9, 9, 9]]), torch.tensor([[1.0, 0, 0], [0, 0, 0]])),
]
COUNTS = StepCounts(num_seqs=3, num_rows=4, num_tokens=6, max_len=3, num_micro=2)
ONE = StepCounts(num_seqs=1, num_rows=1, num_tokens=1, max_len=1, num_micro=1)


@pytest.mark.parametrize(
    "mode, objective",
    [
        ("grpo", (1.5 + 5.0 + 2.0) / 3),  # seq token-means (1+2)/2, (4+5+6)/3, 2/1, mean over 3 seqs = 2.833333
        ("bnpo", (18 / 5 + 2 / 1) / 2),  # micro token-means 3.6 and 2, mean over 2 micro = 2.8
        ("dr_grpo", 20 / (4 * 3)),  # masked sum 20 / (num_rows 4 * max_len 3) = 1.666667: all rows, as TRL
        ("dapo", 20 / 6),  # masked sum 20 / 6 tokens = 3.333333
    ],
)
def test_agg_over_micro_batches_sums_to_global_objective(mode, objective):
    parts = [agg_loss(l, m, mode, COUNTS) for l, m in MICRO]
    assert_close(sum(parts), torch.tensor(objective))


def test_agg_unknown_mode_lists_valid_ones():
    loss, mask = MICRO[1]
    with pytest.raises(ValueError, match="bnpo, dapo, dr_grpo, grpo"):
        agg_loss(loss, mask, "token_mean", ONE)


def test_agg_ignores_masked_tokens():
    # a huge value on a masked token must not leak into any mode
    loss, mask = torch.tensor([[1.0, 1e9]]), torch.tensor([[1.0, 0.0]])
    for mode in AGG_MODES:
        out = agg_loss(loss, mask, mode, ONE)
        assert math.isclose(out.item(), 1.0)
