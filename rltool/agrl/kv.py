"""Cut a tokenized article into (key, value) pairs: the units the policy chooses between.

Works on plain token-id lists, so any tokenizer (or none) will do. With key_tokens K, value_tokens
V and stride S, pair i covers ids[i*S : i*S + K + V]: its key is the first K of those tokens and
its value the next V. Only whole pairs are cut (no short last pair). A key and its own value never
share a token. S = K + V (the default) tiles the article with neither gap nor overlap; S < K + V
makes consecutive pairs overlap (one pair's value reappears in the next pair's key); S > K + V
skips S - K - V tokens between pairs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class KVParams:
    key_tokens: int = 4
    """Tokens in each key (what the selector compares the query with)."""
    value_tokens: int = 2
    """Tokens in each value (what the reward asks the model to predict)."""
    stride: int | None = None
    """Tokens between the starts of consecutive pairs; None means key_tokens + value_tokens."""
    pairs_per_episode: int = 8
    """Pairs offered in one episode; also the episode's number of selection steps T."""
    min_article_tokens: int = 0
    """Shorter articles are skipped. The effective minimum is never below `required_tokens`."""

    def __post_init__(self):
        for name in ("key_tokens", "value_tokens", "pairs_per_episode"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; must be >= 1")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride={self.stride}; must be >= 1")

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.key_tokens + self.value_tokens

    @property
    def required_tokens(self) -> int:
        """Tokens needed to cut pairs_per_episode whole pairs; an article shorter than this or
        than min_article_tokens is skipped."""
        pairs_span = (self.pairs_per_episode - 1) * self.step + self.key_tokens + self.value_tokens
        return max(self.min_article_tokens, pairs_span)


@dataclass(frozen=True)
class KVPair:
    key: tuple[int, ...]
    value: tuple[int, ...]
    start: int
    """Index in the article's token list of the key's first token."""
    labels: tuple[int, ...] = ()
    """Sorted distinct labels (e.g. fact indices) of the pair's key and value tokens; () if none given."""


def cut_pairs(ids: Sequence[int], p: KVParams, labels: Sequence[int] | None = None) -> list[KVPair]:
    """Every whole (key, value) pair of `ids`, in article order; labels, if given, one per token."""
    if labels is not None and len(labels) != len(ids):
        raise ValueError(f"{len(labels)} labels for {len(ids)} tokens")
    K, V = p.key_tokens, p.value_tokens
    pairs = []
    for s in range(0, len(ids) - K - V + 1, p.step):
        span = labels[s : s + K + V] if labels is not None else ()
        pairs.append(KVPair(tuple(ids[s : s + K]), tuple(ids[s + K : s + K + V]), s, tuple(sorted(set(span)))))
    return pairs


def episode_pairs(
    ids: Sequence[int], p: KVParams, labels: Sequence[int] | None = None, rng: random.Random | None = None
) -> list[KVPair] | None:
    """The pairs_per_episode pairs of one episode, or None if the article is too short.

    rng None takes the first pairs_per_episode pairs; with an rng, that many pairs are drawn
    without replacement from the whole article. Either way they come back in article order: the
    selector sees them as a set, and article order is what a "read in order" baseline uses.
    """
    if len(ids) < p.required_tokens:
        return None
    return choose_pairs(cut_pairs(ids, p, labels), p.pairs_per_episode, rng)


def choose_pairs(pairs: Sequence[KVPair], n: int, rng: random.Random | None = None) -> list[KVPair] | None:
    """n of `pairs` in article order: the first n (rng None) or n drawn without replacement; None if fewer."""
    if len(pairs) < n:
        return None
    if rng is None:
        return list(pairs[:n])
    return [pairs[i] for i in sorted(rng.sample(range(len(pairs)), n))]


def build_episodes(
    token_lists: Sequence[Sequence[int]],
    p: KVParams,
    labels: Sequence[Sequence[int]] | None = None,
    rng: random.Random | None = None,
) -> tuple[list[list[KVPair]], list[int], int]:
    """One episode per long-enough article -> (episodes, index of each episode's article, skipped)."""
    episodes, sources, skipped = [], [], 0
    for i, ids in enumerate(token_lists):
        pairs = episode_pairs(ids, p, labels[i] if labels is not None else None, rng)
        if pairs is None:
            skipped += 1
            continue
        episodes.append(pairs)
        sources.append(i)
    return episodes, sources, skipped
