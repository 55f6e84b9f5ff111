"""The round-spec DSL: who speaks in which turn of a multi-actor conversation.

    Bob -> Alice -> (Bob/Alice)*5      Bob, then Alice, then 5 turns each drawn from {Bob, Alice}
    A*(2..4) -> B                      2, 3 or 4 turns of A (uniform), then B
    * -> A                             any actor (uniform over the actors), then A
    A -> (B -> (A|B))*2                nesting: B, one of A/B, B, one of A/B

Grammar (EBNF; whitespace between tokens is ignored, whitespace inside a token is not: `- >` and
`1 0` are errors, and `A B` is two names without an arrow, also an error):

    spec    = seq ;
    seq     = item , { "->" , item } ;                    (* turns in order *)
    item    = atom , [ repeat ] ;
    atom    = NAME | "*" | "(" , seq , { ( "|" | "/" ) , seq } , ")" ;
    repeat  = "*" , ( INT | "(" , INT , ".." , INT , ")" ) ;
    NAME    = letter or "_" , { letter | digit | "_" } ;  (* must be one of the actors *)
    INT     = digit , { digit } ;                         (* >= 1 *)

Inside parentheses `->` binds tighter than `|`: `(A -> B | C)` is "A then B" or "C". `/` is a
synonym of `|` (Actors writes `(Bob/Alice)`). A `*` where an item is expected is the wildcard (one
actor, uniform over all of them); a `*` right after an item is its repetition, so `**3` is three
independent wildcard turns. A repetition range `*(m..n)` is inclusive and its count is drawn
uniformly; every repetition is drawn afresh (`(A|B)*2` can give A, B). An alternative picks each
branch with equal probability, whatever the branches' lengths. Counts are >= 1: a spec never
yields an empty schedule. One repetition suffix per item (`A*2*3` is an error; write `(A*2)*3`).

Schedules come from a generator the caller seeds (never the global `random`, which made Actors'
runs irreproducible), and by default one schedule serves a whole group, so a group's members,
whose rewards are compared with each other, follow the same turn order.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence, Union

from rltool.config import ConfigError

SCHEDULE_PER = ("group", "row")


class RoundSpecError(ConfigError):
    """A malformed round spec: names the spec, the 0-based character position and what was expected."""


@dataclass(frozen=True)
class Name:
    actor: str

    def __str__(self) -> str:
        return self.actor


@dataclass(frozen=True)
class Wildcard:
    """One turn by any actor, uniformly."""

    def __str__(self) -> str:
        return "*"


@dataclass(frozen=True)
class Seq:
    items: tuple["Node", ...]

    def __str__(self) -> str:
        return " -> ".join(str(i) for i in self.items)


@dataclass(frozen=True)
class Alt:
    options: tuple["Node", ...]

    def __str__(self) -> str:
        return "(" + " | ".join(str(o) for o in self.options) + ")"


@dataclass(frozen=True)
class Repeat:
    node: "Node"
    low: int
    high: int
    """Inclusive; low == high is a fixed count."""

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, (Seq, Repeat)) else str(self.node)
        return f"{inner}*{self.low}" if self.low == self.high else f"{inner}*({self.low}..{self.high})"


Node = Union[Name, Wildcard, Seq, Alt, Repeat]


@dataclass(frozen=True)
class Spec:
    text: str
    """The spec as written (for messages)."""
    actors: tuple[str, ...]
    """Who the wildcard draws from, in the order given."""
    root: Node

    def __str__(self) -> str:
        """Canonical form: `A -> (B | A)*(1..3)`; parsing it gives the same tree."""
        return str(self.root)


# ----------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(r"\s*(?:(?P<arrow>->)|(?P<range>\.\.)|(?P<name>[A-Za-z_]\w*)|(?P<int>\d+)|(?P<sym>[*()|/]))")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """[(kind, value, position)] ending with ('end', '', len(text)); kinds: arrow range name int and the symbols."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
            if bad == len(text):  # trailing whitespace
                break
            raise RoundSpecError(f"round_spec {text!r}: unexpected character {text[bad]!r} at position {bad}")
        kind = m.lastgroup
        value = m.group(kind)
        out.append((value if kind == "sym" else kind, value, m.start(kind)))
        pos = m.end()
    out.append(("end", "", len(text)))
    return out


def _show(tok: tuple[str, str, int]) -> str:
    return "the end of the spec" if tok[0] == "end" else repr(tok[1])


# ----------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the grammar in the module docstring; one method per rule."""

    def __init__(self, text: str, actors: tuple[str, ...]):
        self.text, self.actors = text, actors
        self.toks = _tokens(text)
        self.i = 0
        self.open: list[int] = []  # positions of the '(' not yet closed

    def error(self, message: str) -> RoundSpecError:
        return RoundSpecError(f"round_spec {self.text!r}: {message}")

    @property
    def tok(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def spec(self) -> Node:
        node = self.seq()
        kind, _, pos = self.tok
        if kind == ")":
            raise self.error(f"unbalanced parentheses: ')' at position {pos} has no matching '('")
        if kind != "end":
            raise self.error(f"expected '->' or the end of the spec at position {pos}, found {_show(self.tok)}")
        return node

    def seq(self) -> Node:
        items = [self.item()]
        while self.tok[0] == "arrow":
            self.take()
            items.append(self.item())
        flat = [i for item in items for i in (item.items if isinstance(item, Seq) else (item,))]  # A -> (B -> C)
        return flat[0] if len(flat) == 1 else Seq(tuple(flat))

    def item(self) -> Node:
        node = self.atom()
        if self.tok[0] == "*":
            node = self.repeat(node)
        if self.tok[0] == "*":
            raise self.error(f"a second repetition at position {self.tok[2]}; write (X*m)*n")
        return node

    def atom(self) -> Node:
        kind, value, pos = self.take()
        if kind == "name":
            if value not in self.actors:
                raise self.error(f"unknown actor {value!r} at position {pos}; actors: {', '.join(self.actors)}")
            return Name(value)
        if kind == "*":
            return Wildcard()
        if kind == "(":
            self.open.append(pos)
            options = [self.seq()]
            while self.tok[0] in ("|", "/"):
                self.take()
                options.append(self.seq())
            if self.tok[0] == "end":
                raise self.error(f"unbalanced parentheses: '(' at position {self.open[-1]} is never closed")
            if self.tok[0] != ")":
                raise self.error(f"expected '->', '|' or ')' at position {self.tok[2]}, found {_show(self.tok)}")
            self.take()
            self.open.pop()
            return options[0] if len(options) == 1 else Alt(tuple(options))
        if kind == ")" and not self.open:
            raise self.error(f"unbalanced parentheses: ')' at position {pos} has no matching '('")
        raise self.error(f"expected an actor, '*' or '(' at position {pos}, found {_show(self.toks[self.i - 1])}")

    def repeat(self, node: Node) -> Node:
        self.take()  # the '*'
        kind, value, pos = self.take()
        if kind == "int":
            low = high = self.count(value, pos)
        elif kind == "(":
            low_tok = self.expect("int", "a repetition count")
            self.expect("range", "'..'")
            high_tok = self.expect("int", "a repetition count")
            self.expect(")", "')'")
            low, high = self.count(low_tok[1], low_tok[2]), self.count(high_tok[1], high_tok[2])
            if low > high:
                raise self.error(f"repetition range {low}..{high} at position {low_tok[2]}: "
                                 "the lower bound must be <= the upper")
        else:
            raise self.error(f"expected a repetition count n or (m..n) after '*' at position {pos}, "
                             f"found {_show(self.toks[self.i - 1])}")
        return node if low == high == 1 else Repeat(node, low, high)

    def expect(self, kind: str, what: str) -> tuple[str, str, int]:
        if self.tok[0] != kind:
            raise self.error(f"expected {what} at position {self.tok[2]}, found {_show(self.tok)}")
        return self.take()

    def count(self, value: str, pos: int) -> int:
        if int(value) < 1:
            raise self.error(f"zero repetitions at position {pos}: a count must be >= 1")
        return int(value)


def parse(spec: str, actors: Sequence[str]) -> Spec:
    """The spec's tree, every name checked against `actors`; raises RoundSpecError (a ConfigError)."""
    actors = tuple(dict.fromkeys(actors))
    if not actors:
        raise RoundSpecError(f"round_spec {spec!r}: no actors to take turns")
    if not spec.strip():
        raise RoundSpecError(f"round_spec {spec!r}: empty; expected turns such as 'A -> B -> (A|B)*3'")
    return Spec(spec, actors, _Parser(spec, actors).spec())


# ----------------------------------------------------------------------------- sampling


def _draw(node: Node, actors: tuple[str, ...], rng: random.Random) -> list[str]:
    if isinstance(node, Name):
        return [node.actor]
    if isinstance(node, Wildcard):
        return [rng.choice(actors)]
    if isinstance(node, Seq):
        return [a for item in node.items for a in _draw(item, actors, rng)]
    if isinstance(node, Alt):
        return _draw(rng.choice(node.options), actors, rng)
    return [a for _ in range(rng.randint(node.low, node.high)) for a in _draw(node.node, actors, rng)]


def sample(spec: Spec, rng: random.Random) -> list[str]:
    """One concrete schedule: the actor of each turn, drawn with `rng` only."""
    return _draw(spec.root, spec.actors, rng)


def schedules(spec: Spec, seed: int, groups: int, group_size: int, per: str = "group") -> list[list[str]]:
    """One schedule per row, rows group-major (row g * group_size + i is member i of group g).

    per="group": every member of a group follows the same schedule, so their rewards compare the
    completions, not the turn orders; per="row": each row draws its own. A function of its
    arguments only: pass a seed that changes with the step (e.g. hash((run seed, step))).
    """
    if per not in SCHEDULE_PER:
        raise ConfigError(f"schedule_per={per!r}: must be one of {', '.join(SCHEDULE_PER)}")
    if groups < 0 or group_size < 1:
        raise ValueError(f"groups={groups}, group_size={group_size}: need groups >= 0 and group_size >= 1")
    rng = random.Random(seed)
    if per == "row":
        return [sample(spec, rng) for _ in range(groups * group_size)]
    return [list(s) for s in (sample(spec, rng) for _ in range(groups)) for _ in range(group_size)]


def max_turns(spec: Spec | Node) -> int:
    """The longest schedule the spec can yield (for token budgets)."""
    return _turns(spec, max)


def min_turns(spec: Spec | Node) -> int:
    """The shortest schedule the spec can yield (>= 1)."""
    return _turns(spec, min)


def _turns(spec: Spec | Node, pick) -> int:
    """Schedule length when every alternative and repetition count is chosen by `pick` (min or max)."""
    node = spec.root if isinstance(spec, Spec) else spec
    if isinstance(node, (Name, Wildcard)):
        return 1
    if isinstance(node, Seq):
        return sum(_turns(i, pick) for i in node.items)
    if isinstance(node, Alt):
        return pick(_turns(o, pick) for o in node.options)
    return pick(node.low, node.high) * _turns(node.node, pick)
