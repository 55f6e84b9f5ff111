"""The records that pass between the loop's phases: an engine's Completion -> the rollout's Samples (one
trajectory an actor is trained on) -> collate -> the padded Batch tensors the update phase walks over."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import Tensor


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


@dataclass
class Batch:
    input_ids: Tensor  # (B, P+T) prompts left-padded, completions right-padded
    attention_mask: Tensor  # (B, P+T)
    mask: Tensor  # (B, T) 1 on the completion tokens the actor generated (its trained tokens)
    adv: Tensor  # (B, T) per-token advantages (an outcome advantage is broadcast over the row's mask)
    loss_weight: Tensor  # (B,)
    sft_weight: Tensor  # (B,)
    sample_logp: Tensor  # (B, T) the engine's log-probs of the sampled tokens
    on_policy: Tensor  # (B,) bool: sample_logp is this row's behaviour policy (False for relabelled rows)
    prompt_width: int
    old_logp: Optional[Tensor] = None  # (B, T) filled before the updates when iterations > 1
    ref_logp: Optional[Tensor] = None  # (B, T) filled when a KL term is on
    extra_loss: str = ""  # the rows' registered extra loss term ("" none)
    extra: dict = field(default_factory=dict)  # name -> (B, ...) its inputs, zero-padded

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _map(self, fn) -> "Batch":
        """A new Batch with fn(name, tensor) applied to every tensor field (None and ints stay)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["extra"] = {k: fn(k, v) for k, v in self.extra.items()}
        return Batch(**{k: fn(k, v) if isinstance(v, Tensor) else v for k, v in kw.items()})

    def select(self, index: Tensor | slice) -> "Batch":
        """Rows `index` of every per-sample tensor (prompt_width stays: columns are shared)."""
        return self._map(lambda _, v: v[index])

    def split(self, size: int) -> list["Batch"]:
        return [self.select(slice(i, i + size)) for i in range(0, len(self), size)]

    def to(self, device) -> "Batch":
        """The micro-batch on the trainer's device; the step's Batch itself stays on the host."""
        return self._map(lambda _, v: v.to(device))

    def trimmed(self) -> "Batch":
        """The same rows without all-padding columns (left of the longest prompt, right of the longest
        completion): a micro-batch of short rows then costs only its own width."""
        P = self.prompt_width
        left = int((P - self.attention_mask[:, :P].sum(-1)).min())  # padding shared by every prompt
        T = max(int(self.attention_mask[:, P:].sum(-1).max()), 1)  # the longest completion (masked tokens too)
        def trim(name: str, v: Tensor) -> Tensor:
            if v.dim() == 1:
                return v
            return v[:, left:P + T] if name in ("input_ids", "attention_mask") else v[:, :T]

        trimmed = self._map(lambda name, v: v if name in self.extra else trim(name, v))
        trimmed.prompt_width = P - left
        return trimmed

    @property
    def rl_mask(self) -> Tensor:
        return self.mask * (self.loss_weight > 0)[:, None]  # (B, T)

    @property
    def sft_mask(self) -> Tensor:
        return self.mask * (self.sft_weight > 0)[:, None]  # (B, T)


def token_advantages(s: Sample) -> Tensor:
    """(len(completion),) advantages of one sample: its per-token ones, or its outcome one broadcast."""
    if s.token_adv is not None:
        return torch.tensor(s.token_adv, dtype=torch.float)
    return torch.full((len(s.completion_ids),), float(s.adv or 0.0))


def collate(samples: list[Sample], pad_id: int) -> Batch:
    P = max(len(s.prompt_ids) for s in samples)
    T = max(max(len(s.completion_ids) for s in samples), 1)
    B = len(samples)
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, P + T, dtype=torch.long)
    mask = torch.zeros(B, T)
    sample_logp = torch.zeros(B, T)
    adv = torch.zeros(B, T)
    for i, s in enumerate(samples):
        p, c = s.prompt_ids, s.completion_ids
        input_ids[i, P - len(p):P] = torch.tensor(p)
        input_ids[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
        attention_mask[i, P - len(p):P + len(c)] = 1
        mask[i, :len(c)] = torch.tensor(s.completion_mask, dtype=torch.float) if s.completion_mask else 1
        sample_logp[i, :len(c)] = torch.tensor(s.sample_logp[:len(c)]) * mask[i, :len(c)]
        adv[i, :len(c)] = token_advantages(s) * mask[i, :len(c)]
    extra_losses = {s.extra_loss for s in samples}
    if len(extra_losses) > 1:
        raise ValueError(f"one step's samples name different extra losses: {sorted(extra_losses)}")
    return Batch(
        input_ids=input_ids, attention_mask=attention_mask, mask=mask, adv=adv,
        loss_weight=torch.tensor([s.loss_weight for s in samples]),
        sft_weight=torch.tensor([s.sft_weight for s in samples]),
        sample_logp=sample_logp, on_policy=torch.tensor([not s.relabelled for s in samples]), prompt_width=P,
        extra_loss=extra_losses.pop(), extra={k: pad_stack([s.extra[k] for s in samples]) for k in samples[0].extra},
    )


def pad_stack(rows: list[Tensor]) -> Tensor:
    """Tensors of one rank and dtype, shapes differing -> (B, *max shape), zero-padded at the end of each dim."""
    shape = [max(r.shape[d] for r in rows) for d in range(rows[0].dim())]
    out = torch.zeros(len(rows), *shape, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[(i, *[slice(0, n) for n in r.shape])] = r
    return out
