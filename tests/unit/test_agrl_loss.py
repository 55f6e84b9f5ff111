import math

import pytest
import torch
from torch.testing import assert_close

from rltool.agrl.loss import agrl_loss
from rltool.agrl.selection import select_key


def test_policy_term_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    reward = torch.tensor([2.0, 0.0])
    # adv = reward - 0.5 = [1.5, -0.5]; row sums [-3, -0.5]
    # -(1.5 * -3) = 4.5, -(-0.5 * -0.5) = -0.25; mean over the 2 episodes = 2.125
    loss, m = agrl_loss(logp, logp.clone(), mask, reward, 0.5, beta=1.0)
    assert_close(loss, torch.tensor(2.125))
    assert_close(m["loss/policy"], torch.tensor(2.125))
    assert_close(m["loss/kl"], torch.tensor(0.0))  # policy == reference
    assert_close(m["policy/adv_mean"], torch.tensor(0.5))
    assert_close(m["rollout/query_len"], torch.tensor(1.5))


def test_kl_term_by_hand_and_positive_when_policy_differs():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.5]])
    # k3 with d = logp - ref = [0.5, -0.5]: e^-d + d - 1 = 0.106531, 0.148721; summed over the row
    loss, m = agrl_loss(logp, ref, torch.ones(1, 2), torch.tensor([1.0]), 1.0, beta=0.1)  # adv 0
    assert_close(m["loss/kl"], torch.tensor(0.255252))
    assert_close(loss, torch.tensor(0.0255252))
    assert m["loss/kl"] > 0


def test_selection_term_is_added_when_given():
    logp = torch.tensor([[-1.0]])
    sel = torch.tensor([[-0.25, -0.75]])  # two picks
    # adv 2: -(2 * (-1 + -1)) = 4
    loss, m = agrl_loss(logp, logp, torch.ones(1, 1), torch.tensor([2.0]), 0.0, beta=0.0, select_logp=sel)
    assert_close(loss, torch.tensor(4.0))
    assert_close(m["policy/select_logp"], torch.tensor(-1.0))


def _one_sgd_step(reward: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 3, 5) logits parameter stands in for the policy; returns query-token logp before, after."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(1, 3, 5, generator=gen))
    query = torch.tensor([[4, 0, 2]])  # (B, T) sampled query tokens

    def logp_of():
        return torch.log_softmax(logits, -1).gather(-1, query[..., None]).squeeze(-1)  # (1, 3)

    before = logp_of().detach()
    ref = before.clone()  # frozen reference = the initial policy
    loss, _ = agrl_loss(logp_of(), ref, torch.ones(1, 3), torch.tensor([reward]), 0.0, beta=0.1)
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    return before, logp_of().detach()


def test_positive_advantage_makes_the_query_tokens_more_likely():
    before, after = _one_sgd_step(reward=1.0)
    assert (after > before).all()


def test_negative_advantage_makes_the_query_tokens_less_likely():
    before, after = _one_sgd_step(reward=-1.0)
    assert (after < before).all()


def test_learned_selection_raises_the_chosen_keys_probability():
    q = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    used = torch.zeros(1, 3, dtype=torch.bool)
    sel = select_key(q, keys, used, greedy=True)
    zero = torch.zeros(1, 1)
    loss, _ = agrl_loss(
        zero, zero, torch.ones(1, 1), torch.tensor([1.0]), 0.0, beta=0.0, select_logp=sel.logp[:, None]
    )
    loss.backward()
    with torch.no_grad():
        q -= 0.5 * q.grad
    assert select_key(q, keys, used, greedy=True).logp > sel.logp


def test_no_gradient_reaches_the_reference_and_padding_cannot_make_nan():
    logp = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    loss, _ = agrl_loss(logp, ref, torch.tensor([[1, 0]]), torch.tensor([1.0]), 0.0, beta=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert ref.grad is None
    # d/dlogp of -(1 * logp) + 0.5 * (e^(ref - logp) - (ref - logp) - 1) at logp=-1, ref=-2:
    # -1 + 0.5 * (1 - e^-1) = -0.683940; the padded token gets 0
    assert_close(logp.grad, torch.tensor([[-1 + 0.5 * (1 - math.exp(-1)), 0.0]]))


def test_an_empty_batch_gives_zero():
    empty = torch.zeros(0, 3, requires_grad=True)
    loss, _ = agrl_loss(empty, empty.detach(), torch.zeros(0, 3), torch.zeros(0), 0.0, beta=0.1)
    assert loss.item() == 0.0


def test_unknown_kl_estimator_lists_the_valid_ones():
    with pytest.raises(KeyError, match="k3"):
        one = torch.zeros(1, 1)
        agrl_loss(one, one, torch.ones(1, 1), torch.zeros(1), 0.0, beta=0.1, kl_estimator="k9")
