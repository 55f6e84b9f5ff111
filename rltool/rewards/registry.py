"""The reward and feedback registries, so configs pick rewards by name.

A reward is a pure function registered with `@reward("name")`. Its parameters are filled by name,
from what is known about the completion being scored (the signature is read once, at registration):

    completion     the completion text
    prompt         the prompt the caller passed (chat messages for rltool's envs), else the question
    example        the Example
    id, question, answer, <meta keys>   the dataset row's columns (Example fields, then Example.meta)
    conversation   [{"actor", "role", "content"}, ...] and `actor` (the name of the actor scored):
    actor          only where the caller passes them (multi-turn, multi-actor environments)

It returns `float | None`, or `(value, feedback_text)`. `None` means "could not score": the caller
drops that sample from the group baseline instead of pretending it earned 0 (a silent 0 is a wrong
gradient). Any other return (a string, nan, 1e39: see rltool/rewards/values.py) leaves the row
unscored too, with the reason kept. The three forms:

    @reward("exact")                      # one completion at a time
    def exact(completion, answer): return float(completion.strip() == answer)

    @reward("judge", batched=True)        # one call per batch: every parameter gets a list
    def judge(completions, question): return [...]          # one value per completion

    def reward_len(completions, **kwargs):                  # TRL's signature, unchanged
        return [-abs(20 - len(c)) for c in completions]

A parameter named `completions` or `prompts` (TRL's names) makes a function batched, as TRL calls
it: keyword lists, one entry per completion, and `**kwargs` receives the row's columns (and
`prompts` / `completions` when not named). With a chat-message prompt, TRL-style completions are
`[{"role": "assistant", "content": text}]`, as TRL passes them for conversational data; with a
string prompt they are strings. Historical two-parameter functions whose names mean nothing here
(`lambda c, e: ...`) are called positionally as `(completion, example)`.

A feedback function `(completion, example) -> str` writes the text that ERL reflects on.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Collection, Optional, Sequence, Union

from rltool.config import ConfigError
from rltool.envs.base import Example
from rltool.registry import Registry
from rltool.rewards.values import Value, batch_values, feedback_value, reward_value

RewardValue = Union[Optional[float], tuple[Optional[float], str]]
RewardFn = Callable[..., Any]
FeedbackFn = Callable[[str, Example], str]

FIXED = ("completion", "prompt", "example")
"""Names every row fills, whatever its dataset."""
COLUMNS = ("id", "question", "answer")
"""Example's own fields; Example.meta adds the dataset's other columns."""
CONTEXT = ("conversation", "actor")
"""Filled only where the caller passes them (multi-turn environments)."""
PLURAL = {"completions": "completion", "prompts": "prompt"}
"""TRL's batched names; either spelling works in a batched function."""


@dataclass(frozen=True)
class Row:
    """What one completion is scored against: the unit that parameters are filled from."""

    completion: str
    example: Example
    prompt: Any = None
    """The prompt as generated from (chat messages or text); None falls back to the question."""
    conversation: Optional[list[dict]] = None
    actor: Optional[str] = None

    def values(self) -> dict[str, Any]:
        """name -> value for every fillable name; fixed names shadow meta keys of the same name."""
        out = dict(self.example.meta)
        out.update(id=self.example.id, question=self.example.question, answer=self.example.answer)
        if self.conversation is not None:
            out["conversation"] = self.conversation
        if self.actor is not None:
            out["actor"] = self.actor
        out.update(completion=self.completion, example=self.example,
                   prompt=self.example.question if self.prompt is None else self.prompt)
        return out


def row_columns(example: Example, context: Collection[str] = ()) -> set[str]:
    """The names a reward can take for rows like `example` (plus `context`, e.g. CONTEXT for multi-turn)."""
    return {*FIXED, *COLUMNS, *example.meta, *context}


@dataclass(frozen=True)
class Reward:
    """A registered function and how to call it, read from its signature once."""

    name: str
    fn: Callable
    params: tuple[str, ...]
    """Parameters filled by name, in order (singular spellings: `completions` -> `completion`)."""
    required: frozenset[str] = field(default_factory=frozenset)
    """Those of `params` without a default."""
    batched: bool = False
    var_kw: bool = False
    """Has **kwargs: receives every other column too."""
    positional: bool = False
    """The historical `(completion, example)` form, called positionally."""
    spelled: tuple[str, ...] = ()
    """The parameter names as written (what the call passes)."""
    feedback: bool = False
    """A feedback function: it returns text, not a number."""

    @classmethod
    def of(cls, name: str, fn: Callable, batched: bool = False, feedback: bool = False) -> "Reward":
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"reward {name!r} ({where(fn)}): cannot read its signature ({e})") from None
        ps = [p for p in sig.parameters.values() if p.kind is not p.VAR_POSITIONAL]  # TRL passes keywords only
        var_kw = any(p.kind is p.VAR_KEYWORD for p in ps)
        named = [p for p in ps if p.kind is not p.VAR_KEYWORD]
        known = {*FIXED, *COLUMNS, *CONTEXT, *PLURAL}
        if not var_kw and len(named) == 2 and all(p.default is p.empty for p in named) \
                and not {p.name for p in named} & known and not batched:
            return cls(name, fn, ("completion", "example"), frozenset(("completion", "example")), positional=True,
                       feedback=feedback)
        for p in named:
            if p.kind is p.POSITIONAL_ONLY:
                raise ConfigError(f"reward {name!r} ({where(fn)}): parameter {p.name!r} is positional-only; "
                                  "rewards are called with keyword arguments, by name")
        batched = batched or any(p.name in PLURAL for p in named)
        spelled = tuple(p.name for p in named)
        params = tuple(PLURAL.get(n, n) for n in spelled)
        if len(set(params)) < len(params):
            raise ConfigError(f"reward {name!r} ({where(fn)}): takes both the singular and the plural of a name "
                              f"({', '.join(spelled)}); use one")
        required = frozenset(PLURAL.get(p.name, p.name) for p in named if p.default is p.empty)
        return cls(name, fn, params, required, batched, var_kw, False, spelled, feedback)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The function itself, as before registration: `REWARDS["x"](completion, example)` still works."""
        return self.fn(*args, **kwargs)

    def describe(self) -> str:
        return f"{'feedback' if self.feedback else 'reward'} {self.name!r} ({where(self.fn)})"

    def check(self, available: Collection[str]) -> None:
        """ConfigError naming the function and what it asks for that rows do not have."""
        missing = sorted(self.required - set(available))
        if missing:
            raise ConfigError(f"{self.describe()}: parameter{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(map(repr, missing))} cannot be filled from the row; "
                              f"available: {', '.join(sorted(set(available)))}")

    def score(self, rows: Sequence[Row]) -> list[Value]:
        """(value, feedback, bad) per row; one call for a batched function, one per row otherwise.
        A return that is no reward leaves the row unscored with the reason in `bad` (values.py)."""
        if not rows:
            return []
        if self.positional:
            return [self.value(self.run(r.completion, r.example)) for r in rows]
        if not self.batched:
            return [self.value(self.run(**self.kwargs(r.values()))) for r in rows]
        tables = [r.values() for r in rows]
        for t, r in zip(tables, rows):
            if self.trl_style and isinstance(t["prompt"], list):  # TRL's conversational form
                t["completion"] = [{"role": "assistant", "content": r.completion}]
        common = set.intersection(*(set(t) for t in tables))
        differing = set().union(*tables) - common  # e.g. meta columns of one part of a composed env
        used = differing if self.var_kw else differing & set(self.params)
        if used:
            raise ConfigError(f"{self.describe()}: the rows of one batch differ in columns it takes "
                              f"({', '.join(sorted(used))}); a batched reward needs them in every row")
        out = self.run(**self.kwargs({k: [t[k] for t in tables] for k in tables[0] if k in common}, batched=True))
        values, bad = batch_values(out, len(rows))
        if values is None:
            return [(None, "", bad)] * len(rows)
        return [self.value(v) for v in values]

    def value(self, out: Any) -> Value:
        return feedback_value(out) if self.feedback else reward_value(out)

    @property
    def trl_style(self) -> bool:
        return "completions" in self.spelled or "prompts" in self.spelled

    def kwargs(self, values: dict[str, Any], batched: bool = False) -> dict[str, Any]:
        if not self.required <= values.keys():
            self.check(values.keys())
        call = {s: values[p] for s, p in zip(self.spelled, self.params) if p in values}
        if self.var_kw:
            skip = {*self.params, "example", *(() if batched else ("completion", "prompt"))}
            extra = {k: v for k, v in values.items() if k not in skip}
            if batched:  # TRL's spelling of what was not named
                for plural, singular in PLURAL.items():
                    if singular in extra:
                        extra[plural] = extra.pop(singular)
            call.update(extra)
        return call

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function; an exception keeps its type in the message and the function's name.
        sys.exit() in a reward is an error of that call, not the end of the training process."""
        try:
            return self.fn(*args, **kwargs)
        except (Exception, SystemExit) as e:  # re-raised, never swallowed: a failed reward must not become a 0
            kind = "feedback" if self.feedback else "reward"
            raise RuntimeError(f"{kind} {self.name!r} raised {type(e).__name__}: {e}") from e


def where(fn: Callable) -> str:
    """'name in file.py:12' for messages (just the name for builtins and callables without code)."""
    code = getattr(fn, "__code__", None)
    label = getattr(fn, "__qualname__", type(fn).__name__)
    if code is None:
        return label
    return f"{label} in {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"


REWARDS: Registry[Reward] = Registry("reward", home="rltool.rewards")
FEEDBACK: Registry[FeedbackFn] = Registry("feedback", home="rltool.rewards")


def reward(name: str, *, batched: bool = False) -> Callable[[RewardFn], RewardFn]:
    """`@reward("name")` registers the function (returned unchanged); batched=True: called once per batch."""
    def add(fn: RewardFn) -> RewardFn:
        REWARDS.register(name)(Reward.of(name, fn, batched))
        return fn

    return add


def feedback(name: str) -> Callable[[FeedbackFn], FeedbackFn]:
    return FEEDBACK.register(name)


def feedback_entry(name: str) -> Reward:
    """A registered feedback function, called like a reward (by parameter name) but returning text."""
    return Reward.of(name, FEEDBACK[name], feedback=True)


@lru_cache(maxsize=256)
def _adhoc(fn: Callable) -> Reward:
    return Reward.of(getattr(fn, "__name__", "reward"), fn)


def as_reward(fn: Union[Reward, Callable]) -> Reward:
    """A registry entry as is; a plain function read once (cached) under its own name."""
    return fn if isinstance(fn, Reward) else _adhoc(fn)


def call_reward(fn: Union[Reward, Callable], completion: str, example: Example, **context: Any) -> tuple[Optional[float], str]:
    """One completion's (value, feedback) from a registry entry or a plain function, in this process
    with no deadline (a run scores through rltool/rewards/runner.py); a return that is no reward is None.

    context: prompt=, conversation=, actor= (see Row); a batched function gets lists of one.
    """
    value, text, _ = as_reward(fn).score([Row(completion, example, **context)])[0]
    return value, text


_LOADED: dict[str, tuple[str, ...]] = {}
"""Resolved path -> names it registered: a module is imported once per process (validate, then train)."""


def load_reward_module(path: str) -> tuple[str, ...]:
    """Import the user's reward file (`reward.module`); returns the reward names it added.

    Its `@reward` functions register as they are defined. Every other public function defined in
    the file with TRL's signature (a `completions` parameter and `**kwargs`) is registered under
    its own name, so a TRL reward file works without decorators. Each failure is one ConfigError
    line naming the file: missing, a syntax or import error (its type, line and first line), a name
    registered twice, an unreadable signature.
    """
    import os

    from rltool.plugins import exec_file

    key = os.path.realpath(path)
    if key in _LOADED:
        return _LOADED[key]
    before = set(REWARDS.names())
    try:
        module = exec_file(path, "reward.module", "rltool_user_rewards_")
    except ConfigError:
        for added in set(REWARDS.names()) - before:  # a half-imported file leaves nothing behind
            del REWARDS._entries[added]
        raise
    name = module.__name__
    decorated = {id(REWARDS[n].fn) for n in REWARDS.names()}
    for attr, fn in vars(module).items():
        if attr.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != name or id(fn) in decorated:
            continue
        params = inspect.signature(fn).parameters
        if "completions" in params and any(p.kind is p.VAR_KEYWORD for p in params.values()):
            if attr in REWARDS:
                raise ConfigError(f"reward.module={path!r}: function {attr!r} has the name of a registered reward; "
                                  "rename it or register it with @reward(\"another_name\")")
            REWARDS.register(attr)(Reward.of(attr, fn))
    _LOADED[key] = tuple(sorted(set(REWARDS.names()) - before))
    return _LOADED[key]
