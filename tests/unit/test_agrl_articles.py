import re

import pytest

from rltool.agrl.articles import (
    check_disjoint,
    heldout_articles,
    pair_is_root,
    person_name,
    tokenize_article,
    train_articles,
)
from rltool.agrl.kv import KVParams, cut_pairs

PARENT = re.compile(r"^(\w+) is the parent of (\w+)\.$")
GRANDPARENT = re.compile(r"^The grandparent of (\w+) is (\w+)\.$")
SIBLING = re.compile(r"^The sibling of (\w+) is (\w+)\.$")


def test_names_by_hand():
    # syllables: ba be bi bo bu da ...; index = 70*70*a + 70*b + c
    assert person_name(0) == "Bababa"
    assert person_name(70 + 1) == "Babebe"
    assert person_name(70 * 70 + 2) == "Bebabi"
    with pytest.raises(ValueError):
        person_name(-1)


def test_same_seed_same_articles_other_seed_other_articles():
    assert train_articles(5, seed=3) == train_articles(5, seed=3)
    assert heldout_articles(5, seed=3) == heldout_articles(5, seed=3)
    assert [a.text for a in train_articles(5, seed=3)] != [a.text for a in train_articles(5, seed=4)]
    # a longer list starts with the shorter one: n does not reseed
    assert train_articles(8, seed=3)[:5] == train_articles(5, seed=3)


def test_train_and_heldout_never_overlap():
    train = train_articles(200, seed=0)
    check_disjoint(train, heldout_articles(200, seed=0))
    check_disjoint(train, heldout_articles(200, seed=1))  # even across seeds: disjoint name pools
    with pytest.raises(ValueError, match="share"):
        check_disjoint(train[:3], train[2:4])


def test_roots_come_first_and_derived_facts_follow_from_them():
    for article in train_articles(30, seed=1):
        facts = article.facts
        n_roots = sum(f.root for f in facts)
        assert all(f.root for f in facts[:n_roots]) and not any(f.root for f in facts[n_roots:])
        parent_of = {}
        for f in facts[:n_roots]:
            p, c = PARENT.match(f.text).groups()
            parent_of[c] = p
        for f in facts[n_roots:]:
            assert all(facts[d].root for d in f.depends_on) and len(f.depends_on) == 2
            dep_texts = {facts[d].text for d in f.depends_on}
            if m := GRANDPARENT.match(f.text):
                g, gp = m.groups()
                assert parent_of[parent_of[g]] == gp
                assert dep_texts == {f"{parent_of[g]} is the parent of {g}.", f"{gp} is the parent of {parent_of[g]}."}
            else:
                a, b = SIBLING.match(f.text).groups()
                assert a != b and parent_of[a] == parent_of[b]
                assert dep_texts == {f"{parent_of[a]} is the parent of {a}.", f"{parent_of[a]} is the parent of {b}."}


def test_every_fact_is_six_words_and_people_are_distinct():
    for article in heldout_articles(30, seed=2):
        assert all(len(f.text.split()) == 6 for f in article.facts)
        assert len(set(article.people)) == len(article.people)


def test_whitespace_pairs_are_facts_and_root_pairs_are_marked():
    article = train_articles(1, seed=5)[0]
    vocab: dict[str, int] = {}

    def encode(s):
        return [vocab.setdefault(w, len(vocab)) for w in s.split()]

    ids, fact_of_token = tokenize_article(article, encode)
    assert ids == encode(article.text)  # whitespace tokenizer: per-fact encoding = whole-text encoding
    assert len(ids) == 6 * len(article.facts)
    words = {i: w for w, i in vocab.items()}
    pairs = cut_pairs(ids, KVParams(key_tokens=4, value_tokens=2, stride=6), labels=fact_of_token)
    assert len(pairs) == len(article.facts)
    for i, (pair, fact) in enumerate(zip(pairs, article.facts)):
        assert pair.labels == (i,)
        assert " ".join(words[t] for t in pair.key + pair.value) == fact.text
        assert pair_is_root(pair.labels, article) == fact.root
    # a pair straddling a root fact and a derived one is not root; an unlabelled pair is not either
    last_root = sum(f.root for f in article.facts) - 1
    assert not pair_is_root((last_root, last_root + 1), article)
    assert not pair_is_root((), article)
