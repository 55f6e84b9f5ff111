import math

import torch
from torch.testing import assert_close

from rltool.algos.kl import KL_ESTIMATORS

TESTED = {"k1", "k2", "k3"}

# d = logp - ref_logp = [0, 0.5, -1]
LOGP = torch.tensor([[0.0, 0.5, -1.5]])
REF_LOGP = torch.tensor([[0.0, 0.0, -0.5]])


def test_every_estimator_has_a_hand_computed_test():
    assert set(KL_ESTIMATORS.names()) == TESTED


def test_k1():
    assert_close(KL_ESTIMATORS["k1"](LOGP, REF_LOGP), torch.tensor([[0.0, 0.5, -1.0]]))


def test_k2():
    # 0.5 * d^2 = [0, 0.125, 0.5]
    assert_close(KL_ESTIMATORS["k2"](LOGP, REF_LOGP), torch.tensor([[0.0, 0.125, 0.5]]))


def test_k3():
    # exp(-d) + d - 1: d=0 -> 0; d=0.5 -> 0.606531 + 0.5 - 1 = 0.106531; d=-1 -> e - 2 = 0.718282
    assert_close(KL_ESTIMATORS["k3"](LOGP, REF_LOGP), torch.tensor([[0.0, 0.106531, 0.718282]]))


def test_k3_is_clamped_at_10():
    # d = -20: exp(20) - 21 = 4.85e8 unclamped
    assert_close(KL_ESTIMATORS["k3"](torch.tensor([[-20.0]]), torch.zeros(1, 1)), torch.tensor([[10.0]]))


def test_k1_and_k3_are_unbiased_on_samples_from_pi():
    # pi = [0.7, 0.3], ref = [0.5, 0.5]: KL(pi||ref) = 0.7 ln1.4 + 0.3 ln0.6 = 0.082283
    # expectations under pi, done exactly by weighting the two outcomes
    pi, ref = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    kl = 0.7 * math.log(1.4) + 0.3 * math.log(0.6)
    for name in ("k1", "k3"):
        est = (pi * KL_ESTIMATORS[name](pi.log()[None], ref.log()[None])[0]).sum()
        assert_close(est, torch.tensor(kl))


def test_issue_example_gives_finite_gradients_on_masked_and_extreme_tokens():
    # logp=[[-1,-95]], ref=[[-1.2,0]], mask=[[1,0]]: ref - logp = 95 on the masked token, exp(95) = inf in fp32.
    # k3 on the kept token: d = ref - logp = -0.2 -> exp(-0.2) + 0.2 - 1 = 0.018731; grad wrt logp = 1 - exp(-0.2) = 0.181269
    logp = torch.tensor([[-1.0, -95.0]], requires_grad=True)
    ref, mask = torch.tensor([[-1.2, 0.0]]), torch.tensor([[1.0, 0.0]])
    (KL_ESTIMATORS["k3"](logp, ref) * mask).sum().backward()
    assert_close(logp.grad, torch.tensor([[0.181269, 0.0]]))


def test_every_estimator_has_finite_values_and_gradients_on_extreme_inputs():
    # log-ratios of +-1e4 (far beyond exp's fp32 range of ~88.7), with and without a mask
    logp = torch.tensor([[-1e4, 0.0, -3.0, -100.0]], requires_grad=True)
    ref = torch.tensor([[0.0, -1e4, -3.0, 0.0]])
    for name in KL_ESTIMATORS.names():
        for mask in (torch.ones(1, 4), torch.tensor([[0.0, 0.0, 1.0, 0.0]])):
            logp.grad = None
            value = KL_ESTIMATORS[name](logp, ref)
            (value * mask).sum().backward()
            assert torch.isfinite(value).all() and torch.isfinite(logp.grad).all(), name


def test_k3_log_ratio_clamp_leaves_ordinary_values_alone():
    # |ref - logp| <= 20 is untouched: d = ref - logp = 19.9 -> e^19.9 - 20.9 = 4.39e8 -> bounded at 10 as before;
    # d = -19.9 -> e^-19.9 + 19.9 - 1 = 18.9 -> bounded at 10. d = 2 -> e^2 - 3 = 4.389056
    out = KL_ESTIMATORS["k3"](torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[19.9, -19.9, 2.0]]))
    assert_close(out, torch.tensor([[10.0, 10.0, 4.389056]]))


def test_kl_importance_ratio_token_and_sequence():
    from rltool.algos.kl import kl_importance_ratio

    # log(pi/pi_old) = [0.2, -0.4, 9 (masked)]: token -> exp of each; sequence -> exp(mean over mask) = exp(-0.1)
    logp, old = torch.tensor([[0.2, -0.4, 9.0]]), torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert_close(kl_importance_ratio(logp, old, mask, "token"), torch.tensor([[1.221403, 0.670320, 8103.083928]]))
    assert_close(kl_importance_ratio(logp, old, mask, "sequence"), torch.full((1, 3), 0.904837))
    # differentiable: with old = logp detached the value is 1 and the gradient is that of logp
    x = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    r = kl_importance_ratio(x, x.detach(), torch.ones(1, 2), "token")
    r.sum().backward()
    assert_close(r.detach(), torch.ones(1, 2))
    assert_close(x.grad, torch.ones(1, 2))
