"""Value losses against hand-computed values; clipping is against the rollout's old values."""
import pytest
import torch
from torch.testing import assert_close

from rltool.algos.value_losses import VALUE_LOSSES, ValueLossParams

P = ValueLossParams(clip=0.2)


def test_clipped_value_loss_clips_against_old_values():
    value = torch.tensor([1.0, 1.0, 0.0], requires_grad=True)
    old = torch.tensor([0.5, 0.9, 0.0])
    returns = torch.tensor([2.0, 0.0, 1.0])
    # sample 0: V moved 0.5 from old, clipped to 0.2 -> V_clip = 0.7; max((1-2)^2, (0.7-2)^2) = 1.69 -> 0.845
    # sample 1: moved 0.1 < 0.2, V_clip = V: (1-0)^2 = 1 -> 0.5;  sample 2: unmoved, (0-1)^2 = 1 -> 0.5
    loss, metrics = VALUE_LOSSES["clipped"](value, old, returns, P)
    assert_close(loss, torch.tensor([0.845, 0.5, 0.5]))
    assert_close(metrics["value/clipfrac"], torch.tensor(1 / 3))
    loss.sum().backward()
    # sample 0 sits on the clipped branch: no gradient; the others get d/dV 1/2 (V - R)^2 = V - R
    assert_close(value.grad, torch.tensor([0.0, 1.0, -1.0]))


def test_mse_value_loss():
    value, old, returns = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.5, 0.9, 0.0]), torch.tensor([2.0, 0.0, 1.0])
    loss, _ = VALUE_LOSSES["mse"](value, old, returns, P)  # 1/2 (V - R)^2 = 1/2 [1, 1, 1]
    assert_close(loss, torch.tensor([0.5, 0.5, 0.5]))


@pytest.mark.parametrize("name", ["mse", "clipped"])
def test_a_column_value_is_refused_not_broadcast(name):
    # (B, 1) against (B,) would broadcast to (B, B)
    with pytest.raises(ValueError, match=r"all must be \(B,\)"):
        VALUE_LOSSES[name](torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3), P)


def test_every_registered_value_loss_has_a_test():
    assert set(VALUE_LOSSES.names()) == {"mse", "clipped"}  # a new entry needs hand-computed tests here


def test_the_default_value_loss_keeps_pulling_towards_returns_in_raw_reward_units():
    # algo.ppo.norm_reward=false is the default, so returns arrive in the reward's own units (CliffWalking: -100s).
    # A critic that moved 0.5 from its rollout value towards a return of 100 must still be pulled further:
    # the plain 1/2 (V - R)^2 gives d/dV = V - R = 1 - 100 = -99. A clip of 0.2 in those units would give 0
    # (V_clip = 0.5 + 0.2 = 0.7 sits further from R, so the max takes the clipped, constant branch).
    from rltool.loops import PpoConfig

    p = PpoConfig()
    value = torch.tensor([1.0], requires_grad=True)
    loss, _ = VALUE_LOSSES[p.value_loss](value, torch.tensor([0.5]), torch.tensor([100.0]), ValueLossParams(p.value_clip))
    loss.sum().backward()
    assert_close(value.grad, torch.tensor([-99.0]))
