"""Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman 2020,
http://joschu.net/blog/kl-approx.html). All share `fn(logp, ref_logp) -> (B, T)`, with
logp, ref_logp (B, T) log-probs of the sampled tokens; masking and aggregation are the caller's.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rltool.registry import Registry

KLFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("kl estimator")
register_kl = KL_ESTIMATORS.register


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
    log_ratio = ref_logp - logp  # (B, T)
    k3 = torch.exp(log_ratio) - log_ratio - 1  # (B, T)
    # exp is unbounded: one token that ref finds far likelier than pi (a rare sample, a bf16
    # logit spike) can be worth e^20 and swamp the batch's gradient. verl clamps to [-10, 10];
    # k3 >= 0, so only the upper bound ever binds. The clamp biases the estimate on such tokens.
    return torch.clamp(k3, min=-10.0, max=10.0)
