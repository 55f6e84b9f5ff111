import math

import pytest
import torch
from torch.testing import assert_close

from rltool.agrl.filter import RunningStats, TrajectoryFilter, keep_above, keep_top_percent


def test_running_stats_by_hand_and_across_batches():
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, var 5/3
    one = RunningStats()
    one.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    two = RunningStats()
    two.update(torch.tensor([1.0, 2.0]))
    two.update(torch.tensor([3.0, 4.0]))
    for s in (one, two):
        assert s.count == 4
        assert math.isclose(s.mean, 2.5) and math.isclose(s.std, math.sqrt(5 / 3))
    single = RunningStats()
    single.update(torch.tensor([7.0]))
    assert single.std == 0.0


def test_keep_above_is_strict():
    # threshold 1 + 2 * 0.5 = 2
    assert keep_above(torch.tensor([1.9, 2.0, 2.1]), mean=1.0, std=0.5, k=2.0).tolist() == [False, False, True]


def test_keep_top_percent_counts_and_ties():
    r = torch.tensor([0.0, 5.0, 1.0, 7.0, 3.0, 2.0, 6.0, 4.0])
    assert keep_top_percent(r, 25).nonzero().flatten().tolist() == [3, 6]  # 2 of 8: 7 and 6
    # ceil(30% of 4) = ceil(1.2) = 2; tie between the 5s goes to the earlier
    assert keep_top_percent(torch.tensor([1.0, 5.0, 5.0, 5.0]), 30).tolist() == [False, True, True, False]
    assert keep_top_percent(torch.tensor([1.0, 5.0, 5.0, 5.0]), 1).tolist() == [False, True, False, False]


def test_everything_passes_during_warmup_then_the_past_judges():
    f = TrajectoryFilter(mode="std", k=1.0, warmup=4)
    keep, m = f.step(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # 0 seen < 4: all pass
    assert keep.all() and m["filter/kept_frac"].item() == 1.0
    # past only: threshold 2.5 + 1.290994 = 3.790994, so 3.8 passes. Had this batch been added
    # first, mean 3.15 and std 1.094 would give 4.244 and nothing would pass.
    keep, _ = f.step(torch.tensor([3.8, 3.8, 3.8, 3.8]))
    assert keep.all()
    # all 8 recorded: mean (10 + 4 * 3.8) / 8 (3.8 is float32, hence the tolerance)
    assert f.stats.count == 8 and math.isclose(f.stats.mean, 3.15, rel_tol=1e-6)
    keep, m = f.step(torch.tensor([3.0, 4.5, 10.0, -5.0]))
    # now mean 3.15, std sqrt(8.38 / 7) = 1.094133: threshold 4.244133
    assert keep.tolist() == [False, True, True, False]
    assert_close(m["filter/kept_frac"], torch.tensor(0.5))
    assert_close(m["filter/running_mean"], torch.tensor(3.15, dtype=m["filter/running_mean"].dtype))


def test_a_batch_crossing_warmup_is_judged_by_the_count_before_it():
    f = TrajectoryFilter(mode="std", k=0.0, warmup=3)
    assert f.step(torch.tensor([1.0, 2.0]))[0].all()  # 0 seen
    assert f.step(torch.tensor([0.0, 0.0]))[0].all()  # 2 seen < 3, even below the mean
    # 4 seen: mean 0.75, k = 0: keep reward > 0.75
    assert f.step(torch.tensor([0.5, 1.0]))[0].tolist() == [False, True]


def test_percentile_mode_uses_the_batch_after_warmup():
    f = TrajectoryFilter(mode="percentile", top_percent=50, warmup=2)
    assert f.step(torch.tensor([0.0, 1.0, 2.0, 3.0]))[0].all()
    keep, _ = f.step(torch.tensor([-10.0, -20.0, -30.0, -40.0]))  # all below the past; top half kept
    assert keep.tolist() == [True, True, False, False]


@pytest.mark.parametrize("bad", [dict(mode="median"), dict(top_percent=0), dict(top_percent=101)])
def test_bad_filter(bad):
    with pytest.raises(ValueError):
        TrajectoryFilter(**bad)
