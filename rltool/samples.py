"""The records that pass between the loop's phases: rollout -> Sample list -> Batch tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Completion:
    """One generated continuation, as an engine returns it."""

    token_ids: list[int]
    logp: list[float]
    """The engine's log-prob of each sampled token (kept for mismatch correction)."""
    text: str
    truncated: bool
    """Stopped by max_new_tokens rather than EOS."""


@dataclass
class Sample:
    """One trajectory an actor is trained on: a prompt, then every token that followed it.

    Single-turn: the completion is the actor's answer. Multi-turn: the completion holds every later
    turn (the actor's own, other actors', user and tool messages, as chat-template tokens), and
    `completion_mask` marks the actor's own generated tokens, the only ones it is trained on.

    `group` ids are unique per step across ranks: advantages are computed within a group.
    `reward=None` means the reward could not be computed: excluded from its group's baseline,
    advantage 0. `kind` tags ERL phases (attempt / reflection / retry) and lets algorithms weigh
    or split them; `update` orders separate optimizer passes (ERL's split variant).
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    sample_logp: list[float]
    group: int
    reward: Optional[float]
    success: float = 0.0
    feedback: str = ""
    text: str = ""
    truncated: bool = False
    kind: str = "attempt"
    example_id: str = ""
    loss_weight: float = 1.0
    """Multiplies this sample's RL loss (ERL per-type weights)."""
    sft_weight: float = 0.0
    """> 0: also add weighted cross-entropy on the completion (ERL internalization)."""
    update: int = 0
    """Samples with different `update` are optimised in separate passes, in increasing order."""
    adv: Optional[float] = None
    """Filled by the advantage phase (an outcome advantage, broadcast over the trained tokens)."""
    completion_mask: Optional[list[int]] = None
    """Per completion token: 1 where this actor generated it (trained), 0 elsewhere; None: all 1."""
    token_adv: Optional[list[float]] = None
    """Per completion token advantages preset by the rollout (step rewards, GAE); None: `adv` broadcast."""
    actor: str = "policy"
    """The actor this trajectory trains."""
    first_attempt: bool = True
    """Counts in reward/mean and reward/success: an answer to the task as posed (ERL's reflections,
    retries and distill pairs are not, so those metrics stay comparable across algorithms)."""
    relabelled: bool = False
    """The completion was sampled under another prompt (ERL's distill pairs re-use a retry): its
    `sample_logp` is not this row's behaviour policy, so no mismatch correction applies to it."""
    extra_loss: str = ""
    """A registered extra loss term (rltool/algos/losses.py EXTRA_LOSSES) this row adds to the update,
    e.g. AGRL's selection log-prob; "" for none. Every sample of a step names the same one or none."""
    extra: dict = field(default_factory=dict)
    """name -> tensor: the row's inputs to `extra_loss`, padded per name to a common shape by `collate`."""
    info: dict = field(default_factory=dict)
