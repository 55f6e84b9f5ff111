"""Policy losses and their aggregation, kept apart so GRPO, Dr.GRPO, DAPO and GSPO are configs.

A policy loss maps log-probs to a per-token loss (B, T) plus detached metrics; `agg_loss` turns
that into the scalar one micro-batch backprops. KL penalties live in kl.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rltool.registry import Registry


@dataclass(frozen=True)
class LossParams:
    eps_low: float = 0.2
    """Clip the ratio below at 1 - eps_low."""
    eps_high: float = 0.2
    """Clip the ratio above at 1 + eps_high; DAPO's clip-higher uses 0.28."""
    ratio_level: str = "token"
    """Either "token" (PPO/GRPO per-token ratio) or "sequence" (GSPO, length-normalised)."""

    def __post_init__(self):
        if self.ratio_level not in ("token", "sequence"):
            raise ValueError(f"ratio_level '{self.ratio_level}'; valid: sequence, token")


PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, LossParams], tuple[Tensor, dict[str, Tensor]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", home="rltool.algos")
# An extra term a rollout attaches to its rows (`Sample.extra_loss`): fn(model, mb, cfg, counts) -> (loss, metrics),
# its loss already normalised like the policy term so that summing over micro-batches gives the step's.
EXTRA_LOSSES: Registry[Callable] = Registry("extra loss", home=("rltool.algos", "rltool.agrl"))
register_policy_loss = POLICY_LOSSES.register


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


@register_policy_loss("clip")
def clip_loss(
    logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: LossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate -min(r A, clip(r, 1-eps_low, 1+eps_high) A), per token.

    logp, old_logp, mask (B, T); adv (B, T) per token, or (B,) broadcast over the row. Returns loss
    (B, T), unmasked, and detached metrics.
    eps_high > eps_low is DAPO's clip-higher (Yu et al. 2025). ratio_level="sequence" is GSPO
    (Zheng et al. 2025), GSPO-token form: every token's ratio has the value
    s_i = exp(mean_t of log(pi/pi_old)) and the gradient s_i * grad logp_t. Summed with the
    per-sequence token mean (agg "grpo") this is exactly GSPO's sequence-level gradient.
    GSPO's s_i sits much closer to 1 than token ratios: the paper clips at 3e-4 / 4e-4, not 0.2.
    """
    log_ratio = logp - old_logp  # (B, T)
    if p.ratio_level == "sequence":
        seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        ratio = torch.exp(seq_log_ratio.detach()[:, None] + logp - logp.detach())  # (B, T), value s_i
    else:
        ratio = torch.exp(log_ratio)  # (B, T)
    a = adv[:, None] if adv.dim() == 1 else adv  # (B, 1) or (B, T)
    unclipped = -ratio * a  # (B, T)
    clipped = -torch.clamp(ratio, 1 - p.eps_low, 1 + p.eps_high) * a  # (B, T)
    loss = torch.maximum(unclipped, clipped)  # (B, T); max of negatives = -min of surrogates
    metrics = {
        "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "policy/approx_kl": masked_mean(0.5 * log_ratio**2, mask).detach(),
        "policy/ratio": masked_mean(ratio, mask).detach(),
    }
    return loss, metrics


def sft_loss(logp: Tensor) -> Tensor:
    """logp (B, T) -> (B, T) negative log-likelihood; ERL's internalisation term. Not a policy
    loss (no ratio or advantage), so it is not registered; aggregate it with `agg_loss`."""
    return -logp


# Each aggregation maps one micro-batch's masked loss sum to its share of the step objective.
# The normalisers are totals over everything summed into one optimizer step (all micro-batches,
# all ranks), so sum over micro-batches of agg_loss == the objective below.
@dataclass(frozen=True)
class StepCounts:
    """Normalisers of one optimizer step, each a total over every micro-batch and every rank."""

    num_seqs: float
    """Rows with at least one trained token (GRPO's mean over sequences)."""
    num_rows: float
    """Every row of the step, masked or not (Dr.GRPO's B, as TRL: its normaliser is a constant)."""
    num_tokens: float
    """Trained tokens (DAPO's global token mean)."""
    max_len: int
    """rollout.max_new_tokens (Dr.GRPO's constant length)."""
    num_micro: int
    """Micro-batches (BNPO's mean over micro-batches)."""


def _agg_grpo(lm, mask, n: StepCounts):
    # mean over sequences of each sequence's token mean (GRPO; short answers weigh more per token)
    return (lm.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n.num_seqs, 1)


def _agg_bnpo(lm, mask, n: StepCounts):
    # token mean within the micro-batch, then mean over micro-batches (TRL's "bnpo")
    return lm.sum() / mask.sum().clamp(min=1) / max(n.num_micro, 1)


def _agg_dr_grpo(lm, mask, n: StepCounts):
    # constant normaliser: no length bias (Liu et al. 2025); every row counts, masked ones too
    return lm.sum() / max(n.num_rows * n.max_len, 1)


def _agg_dapo(lm, mask, n: StepCounts):
    # global token mean: every token in the step weighs the same (Yu et al. 2025)
    return lm.sum() / max(n.num_tokens, 1)


AGG_MODES: dict[str, Callable[..., Tensor]] = {
    "grpo": _agg_grpo,
    "bnpo": _agg_bnpo,
    "dr_grpo": _agg_dr_grpo,
    "dapo": _agg_dapo,
}


def agg_loss(loss: Tensor, mask: Tensor, mode: str, counts: StepCounts) -> Tensor:
    """loss, mask (B, T) of one micro-batch -> scalar; sum over the step's micro-batches gives:

    "grpo":    mean_i (sum_t l m / sum_t m)      per-sequence token mean, over rows with a trained token
    "bnpo":    mean_micro (sum l m / sum m)      token mean within each micro-batch
    "dr_grpo": sum l m / (num_rows * max_len)    constant normaliser (Dr.GRPO), every row counted
    "dapo":    sum l m / num_tokens              global token mean (DAPO)
    A count of 0 means nothing in the step has that kind of token (an SFT-only batch has no RL
    tokens): the sum is then 0 and is divided by 1, not 0.
    `counts` are totals over the whole step (all micro-batches, all ranks). If the backend averages
    gradients across ranks (DDP, DeepSpeed), the caller multiplies by world size to keep these sums exact.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown agg mode '{mode}'; valid: {', '.join(sorted(AGG_MODES))}")
    lm = loss * mask  # (B, T)
    return AGG_MODES[mode](lm, mask, counts)
