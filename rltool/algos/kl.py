"""Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman 2020,
http://joschu.net/blog/kl-approx.html). All share `fn(logp, ref_logp) -> (B, T)`, with
logp, ref_logp (B, T) log-probs of the sampled tokens; masking and aggregation are the caller's.

Which estimator suits which placement (`algo.kl_placement`):
  reward: the per-sequence sum is subtracted from the reward and only its *value* matters, so it
          must be an unbiased estimate of KL: k1 (verl's and OpenRLHF's in-reward default; its
          sum over the tokens of a sample is exactly log pi(y)/ref(y)). k3 is unbiased too;
          E[k2] is not the KL.
  loss:   the term is differentiated, so what matters is its *gradient*: k3 (GRPO) or k2, whose
          gradient is KL's gradient on samples from pi. k1's gradient is grad log pi, zero in
          expectation: as a loss it does not pull toward the reference.
Every estimator's value and gradient are finite for any finite input, masked positions included
(the mask is applied after the estimator, and 0 * inf would be nan).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rltool.registry import Registry

KLFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("kl estimator", home="rltool.algos")
register_kl = KL_ESTIMATORS.register

MAX_LOG_RATIO = 20.0
"""k3 exponentiates log(ref/pi): clamped to +-20 first (as verl), so exp never overflows."""


@register_kl("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log(pi/ref): unbiased, high variance, negative on some tokens."""
    return logp - ref_logp


@register_kl("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """0.5 * log(pi/ref)^2: non-negative, biased, low variance; its gradient is that of KL."""
    return 0.5 * (logp - ref_logp) ** 2


@register_kl("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """ref/pi - log(ref/pi) - 1: unbiased and non-negative (the GRPO paper's choice)."""
    # Clamp *before* exp: clamping k3 after an overflowed exp(ref - logp) = inf passes a zero
    # gradient into inf, and 0 * inf = nan reaches the weights (also through masked positions).
    log_ratio = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    k3 = torch.exp(log_ratio) - log_ratio - 1  # (B, T)
    # One token that ref finds far likelier than pi (a rare sample, a bf16 logit spike) can still be
    # worth e^20 and swamp the batch's gradient: verl also bounds k3 by 10. k3 >= 0, so only the
    # upper bound binds, and it biases the estimate on such tokens.
    return torch.clamp(k3, min=-10.0, max=10.0)


def kl_importance_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str) -> Tensor:
    """pi / pi_old per token (B, T), unclipped and differentiable, for `algo.kl_is_correction`.

    The KL estimators above assume tokens sampled from pi; the batch was sampled from pi_old, so
    E_pi_old[ratio * k] is the unbiased form (TRL's `use_bias_correction_kl`). level "sequence"
    uses GSPO's length-normalised sequence ratio exp(mean_t log(pi/pi_old)) on every token.
    With one update per batch (old = pi detached) its value is 1 and only its gradient acts.
    """
    log_ratio = (logp - old_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    if level == "sequence":
        seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        return torch.exp(seq).expand_as(logp)
    return torch.exp(log_ratio)
