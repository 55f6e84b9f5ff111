"""`env=a+b`: one environment that serves several example sets.

Train examples are interleaved (a0, b0, a1, b1, ..., then the longer one's tail), each part in
proportion to its size; `env.mix=[3,1]` sets the proportion instead (the smaller share repeated,
nothing dropped), and parts in `env.eval_only` give no training examples at all. Eval examples are concatenated and
scored per part too (eval/<part>/...). Each example is routed to the part that made it, so each
keeps its own prompt and its own rollout (`play`) and answer rule (`answers`): a single-turn part
and a multi-actor part train side by side. Example ids must be unique across the parts; the built-in
envs prefix them with their name.
"""
from __future__ import annotations

from itertools import chain, zip_longest

from rltool.envs.base import Env, Example


class ComposedEnv(Env):
    """Several registered envs as one (built by make_env, never registered itself). Its own hooks route
    each example to its part; `episodes`, `check` and `check_actors` are asked of each part instead."""

    def __init__(self, parts: list[Env], mix: list[float] | None = None, eval_only: list[str] | None = None):
        self._parts = parts
        self.name = "+".join(p.name for p in parts)
        self._owner: dict[str, Env] = {}
        for env in parts:
            for ex in chain(env.train_examples(), env.eval_examples()):
                if self._owner.setdefault(ex.id, env) is not env:
                    raise ValueError(f"example id {ex.id!r} appears in both {self._owner[ex.id].name} "
                                     f"and {env.name}; composed envs need unique ids")
        weights = [0.0 if p.name in (eval_only or []) else (mix[i] if mix else 1.0) for i, p in enumerate(parts)]
        self._train = weighted_interleave([p.train_examples() for p in parts], weights)
        self._eval = [ex for p in parts for ex in p.eval_examples()]

    def train_examples(self) -> list[Example]:
        return self._train

    def eval_examples(self) -> list[Example]:
        return self._eval

    @property
    def parts(self) -> list[Env]:
        return self._parts

    def owner(self, example: Example) -> Env:
        return self._owner[example.id]

    def messages(self, example: Example) -> list[dict]:
        return self.owner(example).messages(example)

    def play(self, ctx, examples: list[Example], ids) -> list:
        """Each part's examples through that part's rollout, in one list."""
        samples = []
        for part in self.parts:
            mine = [e for e in examples if self.owner(e) is part]
            if mine:
                samples += part.play(ctx, mine, ids)
        return samples

    def answers(self, actors: dict, examples: list[Example], cfg) -> list:
        """Each part's greedy answers (its own rule), back in the order of `examples`."""
        out = {}
        for part in self.parts:
            mine = [e for e in examples if self.owner(e) is part]
            if mine:
                out |= dict(zip((e.id for e in mine), part.answers(actors, mine, cfg)))
        return [out[e.id] for e in examples]

    def eval_metrics(self) -> dict[str, str]:
        """The measures taken over all its problems: those every part declares alike (each part's own are
        reported per part, eval/<part>/...)."""
        first, *rest = [p.eval_metrics() for p in self.parts]
        return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def weighted_interleave(streams: list[list[Example]], weights: list[float] | None) -> list[Example]:
    """The training list of the parts (weight 0: left out). No weights: interleaved (a0, b0, a1, b1, ...,
    then the longer one's tail), each part in proportion to its size. Weights: every part is repeated
    cyclically until their counts stand in the weights' proportion (no example is dropped), then
    interleaved by smooth weighted round robin. The sampler shuffles each epoch, so the proportion is
    what counts; the order only makes a short prefix mixed too."""
    live = [i for i, w in enumerate(weights) if w > 0 and streams[i]]
    if len({weights[i] for i in live}) <= 1 and not any(w != 1.0 for w in weights if w > 0):
        return [ex for pair in zip_longest(*(streams[i] for i in live)) for ex in pair if ex is not None]
    scale = max(len(streams[i]) / weights[i] for i in live)
    count = {i: round(scale * weights[i]) for i in live}
    total, credit, pos, out = sum(weights[i] for i in live), {i: 0.0 for i in live}, {i: 0 for i in live}, []
    while len(out) < sum(count.values()):
        for i in live:
            credit[i] += weights[i]
        pick = max((i for i in live if pos[i] < count[i]), key=lambda i: (credit[i], -i))
        out.append(streams[pick][pos[pick] % len(streams[pick])])
        pos[pick] += 1
        credit[pick] -= total
    return out
