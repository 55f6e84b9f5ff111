import random

import pytest

from rltool.agrl.kv import KVParams, build_episodes, cut_pairs, episode_pairs

IDS = list(range(100, 120))  # 20 tokens, ids 100..119


def test_adjacent_pairs_tile_the_article():
    # K=3, V=2, stride 5: starts 0, 5, 10, 15 (15 + 5 = 20 <= 20)
    pairs = cut_pairs(IDS, KVParams(key_tokens=3, value_tokens=2))
    assert [p.start for p in pairs] == [0, 5, 10, 15]
    assert pairs[0].key == (100, 101, 102) and pairs[0].value == (103, 104)
    assert pairs[3].key == (115, 116, 117) and pairs[3].value == (118, 119)
    flat = [t for p in pairs for t in p.key + p.value]
    assert flat == IDS  # no gap, no overlap


def test_exact_token_counts_and_key_value_disjoint_for_any_stride():
    for stride in (1, 2, 3, 5, 7, 11):
        for pair in cut_pairs(IDS, KVParams(key_tokens=3, value_tokens=2, stride=stride)):
            assert len(pair.key) == 3 and len(pair.value) == 2
            assert not set(pair.key) & set(pair.value)  # ids are distinct, so positions are too
            assert pair.key + pair.value == tuple(IDS[pair.start : pair.start + 5])


def test_overlapping_stride():
    # stride 3: starts 0, 3, 6, 9, 12, 15; pair 0's value (103, 104) is the start of pair 1's key
    pairs = cut_pairs(IDS, KVParams(key_tokens=3, value_tokens=2, stride=3))
    assert [p.start for p in pairs] == [0, 3, 6, 9, 12, 15]
    assert pairs[1].key == (103, 104, 105)


def test_gapped_stride_and_no_short_last_pair():
    # stride 7: starts 0, 7, 14 (14 + 5 = 19 <= 20; 21 would not fit)
    pairs = cut_pairs(IDS, KVParams(key_tokens=3, value_tokens=2, stride=7))
    assert [p.start for p in pairs] == [0, 7, 14]
    assert pairs[1].key == (107, 108, 109) and pairs[1].value == (110, 111)
    assert cut_pairs(IDS[:4], KVParams(key_tokens=3, value_tokens=2)) == []


def test_required_tokens():
    # 4 pairs, stride 5, K + V = 5: (4 - 1) * 5 + 5 = 20
    assert KVParams(key_tokens=3, value_tokens=2, pairs_per_episode=4).required_tokens == 20
    # stride 2: 3 * 2 + 5 = 11
    assert KVParams(key_tokens=3, value_tokens=2, stride=2, pairs_per_episode=4).required_tokens == 11
    assert KVParams(key_tokens=3, value_tokens=2, pairs_per_episode=4, min_article_tokens=25).required_tokens == 25


def test_short_articles_are_skipped_and_counted():
    p = KVParams(key_tokens=3, value_tokens=2, pairs_per_episode=4)  # needs 20 tokens
    articles = [list(range(19)), list(range(20)), list(range(30)), list(range(5))]
    episodes, sources, skipped = build_episodes(articles, p)
    assert skipped == 2 and sources == [1, 2]
    assert [len(e) for e in episodes] == [4, 4]
    assert [q.start for q in episodes[1]] == [0, 5, 10, 15]  # the first 4 of the 30-token article's 6
    # min_article_tokens above the pair requirement skips the 20-token article too
    stricter = KVParams(key_tokens=3, value_tokens=2, pairs_per_episode=4, min_article_tokens=21)
    _, sources, skipped = build_episodes(articles, stricter)
    assert skipped == 3 and sources == [2]


def test_random_subset_is_seeded_distinct_and_in_article_order():
    p = KVParams(key_tokens=2, value_tokens=1, pairs_per_episode=4)
    ids = list(range(60))  # 20 pairs
    a = episode_pairs(ids, p, rng=random.Random(0))
    assert a == episode_pairs(ids, p, rng=random.Random(0))
    starts = [q.start for q in a]
    assert len(set(starts)) == 4 and starts == sorted(starts)
    assert all(q in cut_pairs(ids, p) for q in a)


def test_labels():
    labels = [0] * 4 + [1] * 16  # fact 0 is 4 tokens long
    pairs = cut_pairs(IDS, KVParams(key_tokens=3, value_tokens=2), labels=labels)
    assert [q.labels for q in pairs] == [(0, 1), (1,), (1,), (1,)]
    assert cut_pairs(IDS, KVParams(key_tokens=3, value_tokens=2))[0].labels == ()
    with pytest.raises(ValueError, match="labels"):
        cut_pairs(IDS, KVParams(), labels=[0])


@pytest.mark.parametrize("bad", [dict(key_tokens=0), dict(value_tokens=0), dict(pairs_per_episode=0), dict(stride=0)])
def test_bad_params(bad):
    with pytest.raises(ValueError):
        KVParams(**bad)
