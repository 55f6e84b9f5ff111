import math

import pytest
import torch
from torch.testing import assert_close

from rltool.algos.mismatch import mismatch_weights

# log-ratio old - engine per token: seq 0 = [0, ln 3, ln 0.25], seq 1 = [ln 1.5, pad, pad]
OLD = torch.tensor([[-1.0, -1.0, -2.0], [-0.5, 0.0, 0.0]])
ENGINE = OLD - torch.tensor([[0.0, math.log(3.0), math.log(0.25)], [math.log(1.5), 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_token_truncate():
    # ratios [1, 3, 0.25], [1.5]; cap 2 -> [1, 2, 0.25], [1.5]; 1 of 4 tokens truncated
    w, m = mismatch_weights(OLD, ENGINE, MASK, "token", "truncate", 2.0)
    assert_close(w, torch.tensor([[1.0, 2.0, 0.25], [1.5, 0.0, 0.0]]))
    assert_close(m["mismatch/weight_mean"], torch.tensor((1 + 2 + 0.25 + 1.5) / 4))
    assert_close(m["mismatch/corrected_frac"], torch.tensor(0.25))


def test_token_mask():
    # keep 1/2 <= r <= 2: 3 and 0.25 are dropped -> [1, 0, 0], [1.5]; 2 of 4 corrected
    w, m = mismatch_weights(OLD, ENGINE, MASK, "token", "mask", 2.0)
    assert_close(w, torch.tensor([[1.0, 0.0, 0.0], [1.5, 0.0, 0.0]]))
    assert_close(m["mismatch/corrected_frac"], torch.tensor(0.5))


def test_sequence_truncate():
    # seq 0: exp(0 + ln3 + ln0.25) = 0.75 on all tokens; seq 1: 1.5 on its one token (padding ignored)
    w, _ = mismatch_weights(OLD, ENGINE, MASK, "sequence", "truncate", 2.0)
    assert_close(w, torch.tensor([[0.75, 0.75, 0.75], [1.5, 0.0, 0.0]]))


def test_sequence_mask_drops_whole_sequence():
    # cap 1.4: seq 0 (0.75) kept, seq 1 (1.5 > 1.4) dropped
    w, m = mismatch_weights(OLD, ENGINE, MASK, "sequence", "mask", 1.4)
    assert_close(w, torch.tensor([[0.75, 0.75, 0.75], [0.0, 0.0, 0.0]]))
    assert_close(m["mismatch/corrected_frac"], torch.tensor(0.25))


def test_none_is_the_mask():
    w, m = mismatch_weights(OLD, ENGINE, MASK, "none", "truncate", 2.0)
    assert_close(w, MASK)
    assert m == {}


def test_weights_carry_no_gradient():
    old = OLD.clone().requires_grad_()
    w, _ = mismatch_weights(old, ENGINE, MASK, "token", "truncate", 2.0)
    assert not w.requires_grad


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_identical_policies_give_weight_one(level):
    w, m = mismatch_weights(OLD, OLD, MASK, level, "truncate", 2.0)
    assert_close(w, MASK)
    assert m["mismatch/corrected_frac"] == 0
