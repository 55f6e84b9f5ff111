"""Play AGRL episodes: at each step the policy writes a query, the selector picks a remaining pair.

All episodes of a call advance together, one engine call per step (batched over episodes). An
episode with K pairs has K - 1 query steps: after K - 1 picks one pair is left and is read without
a choice, so no query is written (or trained on) for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rltool.agrl.kv import KVPair
from rltool.agrl.selection import mark_used, select_key
from rltool.envs.base import Example
from rltool.engines.engine import Sampling
from rltool.engines.prompts import encode_chat
from rltool.records import Completion


@dataclass
class Episode:
    example: Example
    pairs: list[KVPair]
    order: list[int] = field(default_factory=list)
    """Indices into `pairs` in the order read."""
    prompts: list[list[int]] = field(default_factory=list)
    """The query prompt of each query step."""
    queries: list[Completion] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    """Entropy (nats) of the selection distribution at each query step."""

    @property
    def ordered(self) -> list[KVPair]:
        return [self.pairs[i] for i in self.order]


def pair_text(tokenizer, pair: KVPair) -> str:
    return tokenizer.decode(list(pair.key) + list(pair.value))


def play_episodes(episodes: list[Episode], *, engine, tokenizer, env, vectors, sampling: Sampling,
                  temperature: float, greedy: bool, generator: torch.Generator | None,
                  max_prompt_len: int) -> None:
    """Fill each episode's order, prompts, queries and entropies in place."""
    if not episodes:
        return
    K = len(episodes[0].pairs)
    if any(len(e.pairs) != K for e in episodes):
        raise ValueError("every episode of a batch needs the same number of pairs")
    flat = [p for e in episodes for p in e.pairs]
    keys = vectors.keys([list(p.key) for p in flat], [tokenizer.decode(list(p.key)) for p in flat])
    keys = keys.view(len(episodes), K, -1)  # (E, K, d)
    used = torch.zeros(len(episodes), K, dtype=torch.bool)  # (E, K)
    for _ in range(K - 1):
        for e in episodes:
            read = [pair_text(tokenizer, p) for p in e.ordered]
            e.prompts.append(encode_chat(tokenizer, env.messages(e.example, read), max_prompt_len))
        outputs = engine.generate([e.prompts[-1] for e in episodes], sampling)
        queries = [c for (c,) in outputs]
        q = vectors.queries([c.token_ids for c in queries], [c.text for c in queries])  # (E, d)
        chosen = select_key(q, keys, used, temperature=temperature, greedy=greedy, generator=generator)
        used = mark_used(used, chosen.index)
        for e, c, i, h in zip(episodes, queries, chosen.index.tolist(), chosen.entropy.tolist()):
            e.queries.append(c)
            e.order.append(i)
            e.entropy.append(h)
    last = (~used).nonzero()[:, 1].tolist()  # (E,): the one pair each episode has left
    for e, i in zip(episodes, last):
        e.order.append(i)
