import math

import pytest
import torch
from torch.testing import assert_close

from rltool.agrl.selection import (
    attention_scores,
    mark_used,
    mean_pool,
    project_key,
    project_query,
    select_key,
)

Q = torch.tensor([[1.0, 2.0]])  # (1, 2)
KEYS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)


def test_scores_by_hand():
    # q.k = [1, 2, 3]; / sqrt(2)
    assert_close(attention_scores(Q, KEYS), torch.tensor([[0.707107, 1.414214, 2.121320]]))


def test_greedy_skips_a_used_key_and_reports_logp_and_entropy_over_the_rest():
    used = torch.tensor([[False, False, True]])  # the best key (score 2.12) is used
    sel = select_key(Q, KEYS, used, greedy=True)
    # remaining scores 0.707107, 1.414214: p1 = e^0.707107 / (1 + e^0.707107) = 2.028115 / 3.028115
    assert sel.index.tolist() == [1]
    assert_close(sel.probs, torch.tensor([[0.330238, 0.669762, 0.0]]))
    assert sel.probs[0, 2].item() == 0.0
    assert_close(sel.logp, torch.tensor([math.log(0.669762)]))  # -0.400834
    # -(0.330238 ln 0.330238 + 0.669762 ln 0.669762) = 0.365884 + 0.268463
    assert_close(sel.entropy, torch.tensor([0.634347]))


def test_temperature_divides_the_scores():
    used = torch.tensor([[False, False, True]])
    # logits doubled: p1 = e^1.414214 / (1 + e^1.414214) = 4.113250 / 5.113250
    sel = select_key(Q, KEYS, used, temperature=0.5, greedy=True)
    assert_close(sel.probs, torch.tensor([[0.195570, 0.804430, 0.0]]))


def test_a_large_score_gap_is_not_flattened_by_a_second_softmax():
    # scores 0 and 10 (q.k = 0, 10*sqrt(2) over sqrt(2)): one softmax gives 1/(1+e^-10) = 0.999955;
    # the seed's softmax of those probabilities would give e^1/(e^0+e^1) = 0.731
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[[0.0, 0.0], [10 * math.sqrt(2), 0.0]]])
    sel = select_key(q, keys, torch.zeros(1, 2, dtype=torch.bool), greedy=True)
    assert_close(sel.probs[0, 1], torch.tensor(0.999955))


def test_no_key_is_chosen_twice_over_a_full_episode():
    B, K, d = 5, 6, 4
    gen = torch.Generator().manual_seed(0)
    q, keys = torch.randn(B, d, generator=gen), torch.randn(B, K, d, generator=gen)
    used = torch.zeros(B, K, dtype=torch.bool)
    picks = []
    for _ in range(K):
        sel = select_key(q, keys, used, generator=gen)
        assert not used.gather(-1, sel.index[:, None]).any()
        used = mark_used(used, sel.index)
        picks.append(sel.index)
    order = torch.stack(picks, 1)  # (B, K)
    assert all(sorted(row) == list(range(K)) for row in order.tolist())
    assert used.all()
    with pytest.raises(ValueError, match="no unused key"):
        select_key(q, keys, used)


def test_last_remaining_key_has_probability_one_and_zero_entropy():
    used = torch.tensor([[True, False, True]])
    sel = select_key(Q, KEYS, used)
    assert sel.index.tolist() == [1]
    assert_close(sel.logp, torch.zeros(1))
    assert_close(sel.entropy, torch.zeros(1))


def test_sampling_is_reproducible_and_follows_the_probabilities():
    B = 4000
    q, keys = Q.expand(B, 2), KEYS.expand(B, 3, 2)
    used = torch.zeros(B, 3, dtype=torch.bool)
    a = select_key(q, keys, used, generator=torch.Generator().manual_seed(7))
    b = select_key(q, keys, used, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.index, b.index)
    # softmax([0.707107, 1.414214, 2.121320]): e^x = 2.0281, 4.1133, 8.3421, sum 14.4835
    # -> [0.1400, 0.2840, 0.5760]; 4000 draws: standard error <= 0.008, so atol 0.03 is ~4 SE
    freq = torch.bincount(a.index, minlength=3).float() / B
    assert_close(freq, torch.tensor([0.1400, 0.2840, 0.5760]), atol=0.03, rtol=0)


def test_logp_gradient_wrt_query_is_the_softmax_score_function():
    # d log p_i / d q = (k_i - sum_j p_j k_j) / (sqrt(d) * temperature), sums over unused keys only
    q = Q.clone().requires_grad_(True)
    used = torch.tensor([[False, False, True]])
    sel = select_key(q, KEYS, used, temperature=0.5, greedy=True)  # picks key 1
    sel.logp.sum().backward()
    p0, p1 = 0.195570, 0.804430
    mean_k = p0 * torch.tensor([1.0, 0.0]) + p1 * torch.tensor([0.0, 1.0])
    expected = (torch.tensor([0.0, 1.0]) - mean_k) / (math.sqrt(2) * 0.5)
    assert_close(q.grad, expected[None], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(q.grad).all()


def test_mark_used_returns_a_new_mask():
    used = torch.zeros(2, 3, dtype=torch.bool)
    new = mark_used(used, torch.tensor([2, 0]))
    assert new.tolist() == [[False, False, True], [True, False, False]]
    assert not used.any()


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        select_key(Q, KEYS, torch.zeros(1, 3, dtype=torch.bool), temperature=0.0)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert_close(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_gqa_key_repeats_each_kv_head_for_its_query_group_by_hand():
    # D = 2, H = 4, Hkv = 2, head_dim = 1: k_proj is the identity, so kv heads are [5, 7]
    k = project_key(torch.tensor([5.0, 7.0]), torch.eye(2), num_heads=4, num_kv_heads=2)
    assert k.tolist() == [5.0, 5.0, 7.0, 7.0]  # query heads 0, 1 read kv head 0; 2, 3 read kv head 1


def test_gqa_dot_product_equals_per_head_attention_sum():
    # independent reference: loop over query heads, each reading kv head h // (H / Hkv)
    gen = torch.Generator().manual_seed(0)
    D, H, Hkv, hd = 8, 6, 2, 3
    wq, wk = torch.randn(H * hd, D, generator=gen), torch.randn(Hkv * hd, D, generator=gen)
    bq, bk = torch.randn(H * hd, generator=gen), torch.randn(Hkv * hd, generator=gen)
    hq, hk = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    q, k = project_query(hq, wq, bq), project_key(hk, wk, H, Hkv, bk)
    assert q.shape == k.shape == (H * hd,)
    q_heads = (wq @ hq + bq).view(H, hd)
    kv_heads = (wk @ hk + bk).view(Hkv, hd)
    expected = sum(q_heads[h] @ kv_heads[h // (H // Hkv)] for h in range(H))
    assert_close(q @ k, expected)


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match="multiple"):
        project_key(torch.zeros(4), torch.zeros(4, 4), num_heads=3, num_kv_heads=2)
