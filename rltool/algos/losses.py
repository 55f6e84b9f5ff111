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
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


@register_policy_loss("clip")
def clip_loss(
    logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, p: LossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate -min(r A, clip(r, 1-eps_low, 1+eps_high) A), per token.

    logp, old_logp, mask (B, T); adv (B,). Returns loss (B, T), unmasked, and detached metrics.
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
    a = adv[:, None]  # (B, 1)
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
def _agg_grpo(lm, mask, num_seqs, num_tokens, max_len, num_micro):
    # mean over sequences of each sequence's token mean (GRPO; short answers weigh more per token)
    return (lm.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_seqs


def _agg_bnpo(lm, mask, num_seqs, num_tokens, max_len, num_micro):
    # token mean within the micro-batch, then mean over micro-batches (TRL's "bnpo")
    return lm.sum() / mask.sum().clamp(min=1) / num_micro


def _agg_dr_grpo(lm, mask, num_seqs, num_tokens, max_len, num_micro):
    # constant normaliser: no length bias (Liu et al. 2025)
    return lm.sum() / (num_seqs * max_len)


def _agg_dapo(lm, mask, num_seqs, num_tokens, max_len, num_micro):
    # global token mean: every token in the step weighs the same (Yu et al. 2025)
    return lm.sum() / num_tokens


AGG_MODES: dict[str, Callable[..., Tensor]] = {
    "grpo": _agg_grpo,
    "bnpo": _agg_bnpo,
    "dr_grpo": _agg_dr_grpo,
    "dapo": _agg_dapo,
}


def agg_loss(
    loss: Tensor, mask: Tensor, mode: str, *, num_seqs: float, num_tokens: float, max_len: int, num_micro: int
) -> Tensor:
    """loss, mask (B, T) of one micro-batch -> scalar; sum over the step's micro-batches gives:

    "grpo":    mean_i (sum_t l m / sum_t m)      per-sequence token mean, then sequence mean
    "bnpo":    mean_micro (sum l m / sum m)      token mean within each micro-batch
    "dr_grpo": sum l m / (num_seqs * max_len)    constant normaliser (Dr.GRPO)
    "dapo":    sum l m / num_tokens              global token mean (DAPO)
    num_seqs, num_tokens: totals over the whole step (all micro-batches, all ranks); num_micro:
    micro-batches summed into the step. If the backend averages gradients across ranks (DDP,
    DeepSpeed), the caller multiplies by world size to keep these sums exact.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown agg mode '{mode}'; valid: {', '.join(sorted(AGG_MODES))}")
    lm = loss * mask  # (B, T)
    return AGG_MODES[mode](lm, mask, num_seqs, num_tokens, max_len, num_micro)
