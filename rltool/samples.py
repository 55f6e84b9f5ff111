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
    """One trajectory the policy is trained on.

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
    """Filled by the advantage phase."""
    info: dict = field(default_factory=dict)
