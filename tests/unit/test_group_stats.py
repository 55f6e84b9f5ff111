"""rollout/groups_all_wrong, _all_right, _no_signal on hand-made groups."""
from rltool.algos.group_stats import group_outcomes
from rltool.records import Sample


def s(group, success, reward, first_attempt=True):
    return Sample(prompt_ids=[], completion_ids=[], sample_logp=[], group=group, reward=reward, success=success,
                  first_attempt=first_attempt)


def test_fractions_of_groups():
    samples = [
        s(0, 0.0, 0.0), s(0, 0.0, 0.0), s(0, 1.0, None),    # all wrong, equal rewards (the unscored one is left out)
        s(1, 1.0, 1.2), s(1, 1.0, 1.2),                     # all right, equal rewards
        s(2, 0.0, 0.2), s(2, 1.0, 1.2), s(2, 1.0, 1.0, first_attempt=False),  # mixed (an ERL retry is left out)
        s(3, 0.0, 0.2), s(3, 0.0, 0.0),                     # all wrong, but the shaping term differs: signal
    ]
    # 4 groups: all wrong {0, 3} = 2/4, all right {1} = 1/4, equal rewards {0, 1} = 2/4
    assert group_outcomes(samples) == {"rollout/groups_all_wrong": 0.5, "rollout/groups_all_right": 0.25,
                                       "rollout/groups_no_signal": 0.5}


def test_nothing_scored_gives_no_metrics():
    assert group_outcomes([]) == {}
    assert group_outcomes([s(0, 0.0, None), s(1, 1.0, 1.0, first_attempt=False)]) == {}
