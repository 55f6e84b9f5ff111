"""Rollout/trainer mismatch correction: importance weights pi_trainer / pi_engine on sampled tokens.

vLLM samples with its own kernels (and, on GPU, often bf16), so the trainer's log-prob of a sampled
token differs from the engine's. The policy gradient assumes samples from the trainer's pi_old; the
weight w = pi_old / pi_engine corrects for the difference (Yao et al. 2025, "truncated importance
sampling"). Weights are detached: they rescale the per-token loss, they carry no gradient.

level   token: w_t per token | sequence: one w per sequence, exp(sum_t log-ratio)
mode    truncate: min(w, cap) (TIS) | mask: w where 1/cap <= w <= cap, else 0 (masked IS: drops outliers)
"""
from __future__ import annotations

import torch
from torch import Tensor

LEVELS = ("none", "token", "sequence")
MODES = ("truncate", "mask")


def mismatch_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, level: str, mode: str,
                     cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """old_logp (trainer's pi_old), engine_logp, mask (B, T) -> weights (B, T) and detached metrics.

    Padding positions get weight 0 under `mask`; level "none" returns the mask itself (weight 1).
    """
    if level == "none":
        return mask.float(), {}
    log_ratio = (old_logp - engine_logp).detach() * mask  # (B, T)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)  # (B, T): the sequence's value
    ratio = torch.exp(log_ratio.clamp(max=20.0))  # clamp: exp overflow on a wildly off token
    if mode == "truncate":
        weights = ratio.clamp(max=cap)
        corrected = ratio > cap
    else:
        kept = (ratio >= 1.0 / cap) & (ratio <= cap)
        weights = ratio * kept
        corrected = ~kept
    weights = weights * mask
    n = mask.sum().clamp(min=1)
    metrics = {"mismatch/weight_mean": weights.sum() / n,
               "mismatch/corrected_frac": (corrected * mask).sum() / n}
    return weights, metrics
