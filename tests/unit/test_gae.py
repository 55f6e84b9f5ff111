"""GAE against hand-computed values: termination, truncation, an episode boundary inside the rollout."""
import torch
from torch.testing import assert_close

from rltool.algos.gae import STEP_ADVANTAGES, gae

F, T = False, True


def run(rewards, values, next_values, terminated, truncated, gamma=0.5, lam=0.5):
    col = lambda x, dtype=torch.float32: torch.tensor(x, dtype=dtype)[:, None]  # noqa: E731  (T,) -> (T, 1)
    adv, ret = gae(col(rewards), col(values), col(next_values), col(terminated, torch.bool), col(truncated, torch.bool),
                   gamma=gamma, lam=lam)
    return adv[:, 0], ret[:, 0]


def test_termination_does_not_bootstrap():
    # gamma = lam = 0.5, so gamma*lam = 0.25
    # delta0 = 1 + .5*1.0 - .5 = 1.0; delta1 = 2 + .5*1.5 - 1 = 1.75; delta2 = 3 + 0 (terminated: V(s3)=2.0 unused) - 1.5 = 1.5
    # A2 = 1.5; A1 = 1.75 + .25*1.5 = 2.125; A0 = 1 + .25*2.125 = 1.53125; returns = A + V
    adv, ret = run([1, 2, 3], [0.5, 1.0, 1.5], [1.0, 1.5, 2.0], [F, F, T], [F, F, F])
    assert_close(adv, torch.tensor([1.53125, 2.125, 1.5]))
    assert_close(ret, torch.tensor([2.03125, 3.125, 3.0]))


def test_truncation_bootstraps_from_the_final_state():
    # same, but cut off at t=2: delta2 = 3 + .5*2.0 - 1.5 = 2.5; A1 = 1.75 + .25*2.5 = 2.375; A0 = 1 + .25*2.375 = 1.59375
    adv, _ = run([1, 2, 3], [0.5, 1.0, 1.5], [1.0, 1.5, 2.0], [F, F, F], [F, F, T])
    assert_close(adv, torch.tensor([1.59375, 2.375, 2.5]))


def test_episode_boundary_inside_the_rollout():
    # an episode ends at t=1, a new one runs t=2..3 and is still running when the rollout ends (V(s4) = 4.0)
    # delta = [1 + .5*.5 - .5, 1 + 0 - .5, 1 + .5*2 - 2, 1 + .5*4 - 2] = [0.75, 0.5, 0.0, 1.0]
    # A3 = 1; A2 = 0 + .25*1 = .25; A1 = .5 (no carry over the boundary); A0 = .75 + .25*.5 = .875
    rewards, values, next_values = [1, 1, 1, 1], [0.5, 0.5, 2.0, 2.0], [0.5, 9.0, 2.0, 4.0]
    adv, _ = run(rewards, values, next_values, [F, T, F, F], [F, F, F, F])
    assert_close(adv, torch.tensor([0.875, 0.5, 0.25, 1.0]))
    # truncated at t=1 instead: delta1 = 1 + .5*9 - .5 = 5.0 bootstraps, and still no carry: A0 = .75 + .25*5 = 2.0
    adv, _ = run(rewards, values, next_values, [F, F, F, F], [F, T, F, F])
    assert_close(adv, torch.tensor([2.0, 5.0, 0.25, 1.0]))


def test_environments_are_independent_columns():
    # (T=2, N=2): column 1 is column 0 with its rewards doubled; gamma = lam = 1 -> A_t = sum of rewards ahead - V_t
    rewards = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    zeros, no = torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool)
    adv, _ = gae(rewards, zeros, zeros, no, no, gamma=1.0, lam=1.0)
    assert_close(adv, torch.tensor([[2.0, 4.0], [1.0, 2.0]]))


def test_every_registered_estimator_has_a_test():
    assert set(STEP_ADVANTAGES.names()) == {"gae"}  # a new entry needs hand-computed tests here
