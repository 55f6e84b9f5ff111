import math

import pytest
import torch
from torch.testing import assert_close

from rltool.agrl.kv import KVPair
from rltool.agrl.reward import (
    episode_input,
    episode_reward,
    gather_value_logp,
    pad_positions,
    relative_reward,
    step_input,
    step_value_logp,
)

A = KVPair(key=(0,), value=(1, 2), start=0)
B = KVPair(key=(3,), value=(1,), start=3)
PREFIX, SEP = (5,), (4,)
LN2 = math.log(2)


def test_layout_by_hand():
    ids, positions = episode_input([A, B], PREFIX, SEP)
    #          prefix k_A v_A   sep k_B v_B
    assert ids == [5, 0, 1, 2, 4, 3, 1]
    assert positions == [[2, 3], [6]]
    assert step_input([], A, PREFIX, SEP) == ([5, 0, 1, 2], [2, 3])
    assert step_input([A], B, PREFIX, SEP) == (ids, [6])
    assert episode_input([B, A]) == ([3, 1, 0, 1, 2], [[1], [3, 4]])  # no prefix, no sep


def test_step_inputs_are_prefixes_of_the_episode_sequence():
    pairs = [KVPair((10 + i, 20 + i), (30 + i,), 0) for i in range(4)]
    ids, positions = episode_input(pairs, PREFIX, SEP)
    for t in range(4):
        step_ids, step_pos = step_input(pairs[:t], pairs[t], PREFIX, SEP)
        assert ids[: len(step_ids)] == step_ids
        assert step_pos == positions[t]


def bigram_logits(ids: torch.Tensor) -> torch.Tensor:
    """A tiny causal 'model': row r of the table is log P(next | r), vocab 6.

    P(1 | 0) = 1/2, P(2 | 1) = 1/4, P(1 | 3) = 1/8; the rest of each row is spread evenly."""
    P = torch.full((6, 6), 1.0)
    for r, c, p in [(0, 1, 0.5), (1, 2, 0.25), (3, 1, 0.125)]:
        P[r] = (1 - p) / 5
        P[r, c] = p
    P[[2, 4, 5]] = 1 / 6
    return P.log()[ids]  # (N, L, 6)


def test_mean_value_logp_of_a_tiny_model_by_hand():
    ids, positions = episode_input([A, B], PREFIX, SEP)  # [5, 0, 1, 2, 4, 3, 1], [[2, 3], [6]]
    pos, mask = pad_positions(positions)  # (T=2, V=2)
    assert pos.tolist() == [[2, 3], [6, 1]] and mask.tolist() == [[True, True], [True, False]]
    ids_t = torch.tensor([ids])  # (1, 7)
    logp = gather_value_logp(bigram_logits(ids_t), ids_t, pos[None]).view(2, 2)  # (E * T, V)
    # step 0: log P(1|0), log P(2|1) = -ln 2, -2 ln 2; step 1: log P(1|3) = -3 ln 2
    assert_close(logp[mask], torch.tensor([-LN2, -2 * LN2, -3 * LN2]))
    # R = mean over steps of the per-step token mean = (-1.5 ln 2 - 3 ln 2) / 2 = -2.25 ln 2
    assert_close(step_value_logp(logp, mask, steps=2), torch.tensor([[-1.5 * LN2, -3 * LN2]]))
    assert_close(episode_reward(logp, mask, steps=2), torch.tensor([-2.25 * LN2]))


def test_one_pass_per_episode_equals_one_pass_per_step():
    # a model whose prediction depends on the whole context: logits = W . mean(embeddings so far)
    gen = torch.Generator().manual_seed(0)
    emb, W = torch.randn(40, 8, generator=gen), torch.randn(8, 40, generator=gen)

    def logits_of(ids):  # (N, L) -> (N, L, 40), causal by construction
        e = emb[ids]
        return (e.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[:, None]) @ W

    pairs = [KVPair((10 + i, 20 + i), (30 + i, 35 + i), 0) for i in range(3)]
    ids, positions = episode_input(pairs, PREFIX, SEP)
    ids_t = torch.tensor([ids])
    once = gather_value_logp(logits_of(ids_t), ids_t, torch.tensor([positions]))[0]  # (T, V)
    for t in range(3):
        step_ids, step_pos = step_input(pairs[:t], pairs[t], PREFIX, SEP)
        s = torch.tensor([step_ids])
        assert_close(gather_value_logp(logits_of(s), s, torch.tensor([step_pos]))[0], once[t])
    # and the order matters to such a model (it would not to a bigram one)
    rev_ids, rev_pos = episode_input(pairs[::-1], PREFIX, SEP)
    r = torch.tensor([rev_ids])
    rev = gather_value_logp(logits_of(r), r, torch.tensor([rev_pos]))[0]
    assert not torch.allclose(rev[-1], once[0])


def test_gather_value_logp_by_hand():
    ids = torch.tensor([[0, 2, 1]])
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [9.0, 9.0, 9.0]]])
    # token 2 after uniform logits: ln(1/3); token 1 after [ln 2, 0, 0]: ln(1 / (2 + 1 + 1)) = ln(1/4)
    assert_close(gather_value_logp(logits, ids, torch.tensor([[1, 2]])), torch.tensor([[-math.log(3), -math.log(4)]]))
    with pytest.raises(ValueError, match="position is 0"):
        gather_value_logp(logits, ids, torch.tensor([[0]]))


def test_reward_and_baseline_subtraction_by_hand():
    # E = 2 episodes, T = 2 steps, V = 2; padding holds nan / -inf and must not leak
    logp = torch.tensor([[-1.0, -3.0], [-2.0, float("nan")], [-0.5, -1.5], [-4.0, float("-inf")]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.bool)
    # step means: [-2, -2], [-1, -4]; R = [-2, -2.5]
    assert_close(step_value_logp(logp, mask, steps=2), torch.tensor([[-2.0, -2.0], [-1.0, -4.0]]))
    R = episode_reward(logp, mask, steps=2)
    assert_close(R, torch.tensor([-2.0, -2.5]))
    assert_close(relative_reward(R, torch.tensor([-3.0, -2.0])), torch.tensor([1.0, -0.5]))


def test_bad_rows():
    with pytest.raises(ValueError, match="multiple"):
        step_value_logp(torch.zeros(3, 2), torch.ones(3, 2, dtype=torch.bool), steps=2)
    with pytest.raises(ValueError, match="no value token"):
        step_value_logp(torch.zeros(2, 2), torch.tensor([[True, True], [False, False]]), steps=2)
