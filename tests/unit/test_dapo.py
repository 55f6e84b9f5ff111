import torch
from torch.testing import assert_close

from rltool.algos.dapo import informative_groups, overlong_penalty


def test_overlong_penalty():
    # max_len 10, buffer 4 -> free up to 6; then -(len - 6) / 4, floored at -1
    # 5 -> 0; 6 -> 0; 7 -> -0.25; 9 -> -0.75; 10 -> -1; 12 -> -1.5 floored to -1
    lengths = torch.tensor([5, 6, 7, 9, 10, 12])
    out = overlong_penalty(lengths, max_len=10, buffer=4, penalty=1.0)
    assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0, -1.0]))
    # penalty scales linearly: 0.5 * the above
    out = overlong_penalty(lengths, max_len=10, buffer=4, penalty=0.5)
    assert_close(out, torch.tensor([0.0, 0.0, -0.125, -0.375, -0.5, -0.5]))


def test_overlong_penalty_zero_buffer_is_off():
    out = overlong_penalty(torch.tensor([1, 10, 100]), max_len=10, buffer=0, penalty=1.0)
    assert_close(out, torch.zeros(3))


def test_informative_groups():
    # g0 valid [1, 0] -> informative, the invalid member is kept with its group
    # g1 valid [1, 1] (the nan is invalid) -> not informative
    # g2 one valid member -> not informative;  g3 valid [0.5, 0.25] -> informative
    nan = float("nan")
    rewards = torch.tensor([1.0, 0.0, nan, 1.0, 1.0, nan, 5.0, 7.0, 0.5, 0.25])
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    valid = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    want = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert torch.equal(informative_groups(rewards, group, valid), want)


def test_dynamic_sampling_filters_on_success_not_on_the_length_shaped_reward():
    # group 0: all wrong, rewards differ only by the overlong penalty (0, -0.25) -> no accuracy signal
    # group 1: one right, one wrong -> informative either way; group 2: all right, rewards tied
    from rltool.algos.rollouts import keep_informative
    from rltool.records import Sample

    rows = [(0, 0.0, 0.0), (0, -0.25, 0.0), (1, 1.0, 1.0), (1, 0.0, 0.0), (2, 1.0, 1.0), (2, 1.0, 1.0)]
    samples = [Sample(prompt_ids=[1], completion_ids=[2], sample_logp=[0.0], group=g, reward=r, success=s)
               for g, r, s in rows]
    assert [s.group for s in keep_informative(samples)] == [1, 1]  # default metric: success
    assert [s.group for s in keep_informative(samples, "success")] == [1, 1]
    assert [s.group for s in keep_informative(samples, "reward")] == [0, 0, 1, 1]
