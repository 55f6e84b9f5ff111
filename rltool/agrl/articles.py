"""Offline family-tree articles whose later facts are predictable only from earlier ones.

The generator (documented so runs can be reproduced and reasoned about):
  1. Draw distinct invented names (three consonant-vowel syllables, e.g. "Bazomi") from the
     split's own pool: train uses even-numbered names, held-out odd-numbered ones, so the two
     splits never share a person, and a model cannot carry a memorised name across them.
  2. A founder has `children` (inclusive range) children; each child has `grandchildren`.
  3. Root facts, one per parent-child edge, in breadth-first order: "{P} is the parent of {C}."
     They depend on nothing and introduce a new name, so they cannot be predicted.
  4. Derived facts, shuffled, after all roots:
       "The grandparent of {G} is {F}."   depends on the two parent facts on the path F -> G;
       "The sibling of {A} is {B}."       one per pair of siblings, depends on both parent facts.
     Each is predictable only once its root facts have been read: reading order matters.
Every fact is exactly six whitespace-separated words, so with a whitespace tokenizer, 4 key
tokens, 2 value tokens and stride 6, each (key, value) pair is exactly one fact, e.g.
key "The grandparent of Bazomi", value "is Kelupa.". With a BPE tokenizer pairs straddle facts.
The same (n, seed, split) always gives the same articles (one `random.Random` per split).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from rltool.agrl.kv import KVPair

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]  # 70
NAME_POOL = len(SYLLABLES) ** 3  # 343,000 names; each split gets half
SPLITS = {"train": 0, "heldout": 1}


@dataclass(frozen=True)
class Fact:
    text: str
    depends_on: tuple[int, ...]
    """Indices (into the article's facts) of the facts this one can be derived from."""

    @property
    def root(self) -> bool:
        return not self.depends_on


@dataclass(frozen=True)
class Article:
    id: str
    title: str
    facts: tuple[Fact, ...]
    people: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.facts)


def person_name(index: int) -> str:
    """Bijection from 0..NAME_POOL-1 to names: distinct indices give distinct names."""
    if not 0 <= index < NAME_POOL:
        raise ValueError(f"name index {index} outside 0..{NAME_POOL - 1}")
    a, rest = divmod(index, len(SYLLABLES) ** 2)
    b, c = divmod(rest, len(SYLLABLES))
    return (SYLLABLES[a] + SYLLABLES[b] + SYLLABLES[c]).capitalize()


def family_tree_article(
    rng: random.Random,
    split: str,
    article_id: str,
    *,
    children: tuple[int, int] = (2, 3),
    grandchildren: tuple[int, int] = (1, 3),
) -> Article:
    """One article from `rng`, with names from `split`'s half of the pool (see module doc)."""
    kids = [rng.randint(*grandchildren) for _ in range(rng.randint(*children))]
    n_people = 1 + len(kids) + sum(kids)
    # index 2j + offset: train and held-out names are disjoint by construction
    names = [person_name(2 * j + SPLITS[split]) for j in rng.sample(range(NAME_POOL // 2), n_people)]
    founder, rest = names[0], iter(names[1:])
    tree = {c: [next(rest) for _ in range(k)] for c, k in zip([next(rest) for _ in kids], kids)}

    facts: list[Fact] = []
    parent_fact: dict[str, int] = {}  # child -> index of "{parent} is the parent of {child}."
    edges = [(founder, c) for c in tree] + [(c, g) for c, gs in tree.items() for g in gs]
    for p, c in edges:  # breadth-first: the founder's children, then the grandchildren
        parent_fact[c] = len(facts)
        facts.append(Fact(f"{p} is the parent of {c}.", ()))

    derived: list[Fact] = []
    for c, gs in tree.items():
        for g in gs:
            derived.append(Fact(f"The grandparent of {g} is {founder}.", (parent_fact[c], parent_fact[g])))
    for siblings in [list(tree)] + list(tree.values()):
        for a, b in itertools.combinations(siblings, 2):
            a, b = (a, b) if rng.random() < 0.5 else (b, a)
            derived.append(Fact(f"The sibling of {a} is {b}.", (parent_fact[a], parent_fact[b])))
    rng.shuffle(derived)
    return Article(article_id, f"The family of {founder}", tuple(facts + derived), tuple(names))


def _articles(n: int, seed: int, split: str) -> list[Article]:
    rng = random.Random(2 * seed + SPLITS[split])  # one stream per (seed, split)
    return [family_tree_article(rng, split, f"family-{split}-{seed}-{i}") for i in range(n)]


def train_articles(n: int, seed: int) -> list[Article]:
    """The first n training articles of `seed`; names only from the train half of the pool."""
    return _articles(n, seed, "train")


def heldout_articles(n: int, seed: int) -> list[Article]:
    """The first n held-out articles of `seed`; no name, id or text in common with any train article."""
    return _articles(n, seed, "heldout")


def check_disjoint(train: Iterable[Article], heldout: Iterable[Article]) -> None:
    """Raise ValueError if the two sets share an article id, a text or a person."""
    train, heldout = list(train), list(heldout)
    for what, key in (("id", lambda a: {a.id}), ("text", lambda a: {a.text}), ("person", lambda a: set(a.people))):
        shared = set().union(*map(key, train)) & set().union(*map(key, heldout))
        if shared:
            raise ValueError(f"train and held-out articles share {len(shared)} {what}(s), e.g. {sorted(shared)[0]!r}")


def tokenize_article(article: Article, encode: Callable[[str], Sequence[int]]) -> tuple[list[int], list[int]]:
    """-> (token ids, the fact index of each token), for `kv.cut_pairs(..., labels=)`.

    Facts are encoded one at a time (" " + text after the first) and concatenated, so each token
    belongs to exactly one fact. For whitespace tokenizers this equals encoding `article.text`; a
    BPE tokenizer could merge across a sentence boundary in the joined text, which this avoids.
    """
    ids: list[int] = []
    fact_of_token: list[int] = []
    for i, fact in enumerate(article.facts):
        piece = list(encode(fact.text if i == 0 else " " + fact.text))
        ids += piece
        fact_of_token += [i] * len(piece)
    return ids, fact_of_token


def pair_is_root(facts: Iterable[int], article: Article) -> bool:
    """A (key, value) pair is "root" if every fact it touches is a root fact (for the metric
    "first pick is a root fact"). A pair straddling a root and a derived fact is not root."""
    facts = list(facts)
    return bool(facts) and all(article.facts[f].root for f in facts)


def fact_pairs(article: Article, encode: Callable[[str], Sequence[int]]) -> list[KVPair]:
    """One (key, value) pair per fact: the key is the fact without its last word, the value is that
    word (" " + word, encoded apart). For generated articles the last word is the fact's answer (a
    name), so the reward asks exactly "who?" and a key never gives its own value away. Labels are
    the fact's index; `start` is the fact's index too (pairs keep article order)."""
    pairs = []
    for i, fact in enumerate(article.facts):
        key, _, last = fact.text.rpartition(" ")
        if not key:
            raise ValueError(f"fact {i} of {article.id} has one word; a pair needs a key and a value: {fact.text!r}")
        pairs.append(KVPair(tuple(encode(key)), tuple(encode(" " + last)), i, (i,)))
    return pairs
