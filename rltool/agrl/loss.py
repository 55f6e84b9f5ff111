"""The AGRL policy loss for one batch of (kept) episodes: REINFORCE on the query tokens + KL.

  loss = mean_e [ -(R_e - b) * ( sum_s sum_t log pi(q_e,s,t | state) + sum_s log p_sel(key_e,s) ) ]
         + beta * mean_e sum_t KL_k3(pi || pi_ref)_e,t
Each episode's query tokens of all its steps are one row (B = episodes, T = query tokens).
The advantage R - b is detached; b is a number the caller chooses and passes explicitly: the
trajectory filter's running mean (from earlier batches) or 0. The selection term is used only
when `agrl.learn_selection` is on (pass select_logp, else None).
Departures from the seed, whose gradient never reached the model: logp must be the policy's live,
differentiable log-probs, and ref_logp those of the frozen base model, not a copy of the policy
taken this step (whose KL is identically 0). The KL is summed over a row's query tokens, like the
policy term, so beta weighs the KL of the whole query; then both terms are averaged over
episodes. k3's gradient is KL's on samples from pi (see rltool/algos/kl.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltool.algos.kl import KL_ESTIMATORS


def agrl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    reward: Tensor,
    baseline: float | Tensor,
    *,
    beta: float,
    select_logp: Tensor | None = None,
    kl_estimator: str = "k3",
) -> tuple[Tensor, dict[str, Tensor]]:
    """logp, ref_logp, mask (B, T) over query tokens; reward (B,); select_logp (B, S) or None.

    Returns the scalar loss and detached metrics. B = 0 (the filter kept nothing) gives a loss
    of exactly 0 and a zero gradient, so a caller may still step without nan.
    """
    B = logp.shape[0]
    mask = mask.bool()
    zero = torch.zeros_like(logp)  # (B, T)
    adv = (reward - baseline).detach()  # (B,)
    # where, not multiply: padded positions may hold -inf, and -inf * 0 is nan
    seq_logp = torch.where(mask, logp, zero).sum(-1)  # (B,)
    if select_logp is not None:
        seq_logp = seq_logp + select_logp.sum(-1)  # (B,)
    policy = -(adv * seq_logp).sum() / max(B, 1)
    # the reference is frozen: no gradient may flow into it, whatever the caller passed
    kl_tok = torch.where(mask, KL_ESTIMATORS[kl_estimator](logp, ref_logp.detach()), zero)  # (B, T)
    kl = kl_tok.sum() / max(B, 1)
    loss = policy + beta * kl
    metrics = {
        "loss/policy": policy.detach(),
        "loss/kl": kl.detach(),
        "policy/adv_mean": adv.mean() if B else torch.zeros(()),
        "rollout/query_len": mask.sum(-1).float().mean() if B else torch.zeros(()),
    }
    if select_logp is not None:
        metrics["policy/select_logp"] = select_logp.sum(-1).mean().detach() if B else torch.zeros(())
    return loss, metrics
