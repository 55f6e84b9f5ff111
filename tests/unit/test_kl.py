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
