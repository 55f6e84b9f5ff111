"""Choose the next key by attention over the keys not used yet.

scores = q . k / sqrt(d) over the remaining keys, then one softmax with a temperature. The seed
applied a second softmax to probabilities in [0, 1], which flattens any scores to near-uniform;
here the logits are the scaled scores themselves and are softmaxed exactly once.
The log-prob of the chosen key stays attached to the graph (query and keys), so
`agrl.learn_selection` can add it to the policy loss.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class Selection(NamedTuple):
    index: Tensor  # (B,) long, the chosen key
    logp: Tensor  # (B,) log-prob of the chosen key; differentiable w.r.t. query and keys
    entropy: Tensor  # (B,) entropy (nats) of the distribution over the remaining keys
    probs: Tensor  # (B, K) the distribution; exactly 0 on used keys


def attention_scores(query: Tensor, keys: Tensor) -> Tensor:
    """query (B, d), keys (B, K, d) -> scores (B, K) = q . k / sqrt(d)."""
    return torch.einsum("bd,bkd->bk", query, keys) / math.sqrt(query.shape[-1])


def select_key(
    query: Tensor,
    keys: Tensor,
    used: Tensor,
    *,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Selection:
    """One selection step. query (B, d), keys (B, K, d), used (B, K) bool (True = already chosen).

    Sampled (training; pass a seeded `generator` for reproducibility) or greedy (eval). A used key
    has logit -inf, probability exactly 0, and is never chosen. Every row needs a key left.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; must be > 0 (use greedy=True for argmax)")
    if bool(used.all(-1).any()):  # a device sync, once per step: a row with nothing left is a caller bug
        raise ValueError("a row has no unused key left")
    logits = (attention_scores(query, keys) / temperature).masked_fill(used, float("-inf"))  # (B, K)
    logp_all = torch.log_softmax(logits, -1)  # (B, K), -inf on used keys
    probs = logp_all.exp()  # (B, K)
    if greedy:
        index = logits.argmax(-1)  # (B,)
    else:
        index = torch.multinomial(probs.detach(), 1, generator=generator).squeeze(-1)  # (B,)
    # fill used keys' -inf with 0 first: 0 * -inf would be nan in the value and in the gradient
    entropy = -(probs * logp_all.masked_fill(used, 0.0)).sum(-1)  # (B,)
    logp = logp_all.gather(-1, index[:, None]).squeeze(-1)  # (B,)
    return Selection(index, logp, entropy, probs)


def mark_used(used: Tensor, index: Tensor) -> Tensor:
    """used (B, K) bool, index (B,) -> a new mask with each row's chosen key set; input untouched."""
    return used.scatter(-1, index[:, None], True)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """hidden (B, L, D), mask (B, L) -> (B, D): the mean over unmasked positions (a text's vector)."""
    m = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def project_query(hidden: Tensor, q_weight: Tensor, q_bias: Tensor | None = None) -> Tensor:
    """hidden (..., D) pooled at a layer, q_weight (H * hd, D) that layer's q_proj -> (..., H * hd)."""
    return torch.nn.functional.linear(hidden, q_weight, q_bias)


def project_key(
    hidden: Tensor, k_weight: Tensor, num_heads: int, num_kv_heads: int, k_bias: Tensor | None = None
) -> Tensor:
    """hidden (..., D), k_weight (Hkv * hd, D) that layer's k_proj -> (..., H * hd), GQA-aware.

    Under grouped-query attention query head h reads kv head h // (H / Hkv) (HF `repeat_kv`), so
    each kv head is repeated for its group of query heads; then q . k summed over the flattened
    vector is the sum over heads of each head's q_h . k_h, as attention would compute it.
    Limits: no RoPE (a pooled vector has no position), and `attention_scores` divides by
    sqrt(H * hd), not attention's sqrt(hd) per head: a constant factor the temperature absorbs.
    """
    return repeat_kv_heads(torch.nn.functional.linear(hidden, k_weight, k_bias), num_heads, num_kv_heads)


def repeat_kv_heads(k: Tensor, num_heads: int, num_kv_heads: int) -> Tensor:
    """k (..., Hkv * hd) a k_proj output -> (..., H * hd): each kv head repeated for its query heads."""
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    k = k.unflatten(-1, (num_kv_heads, -1))  # (..., Hkv, hd)
    k = k.repeat_interleave(num_heads // num_kv_heads, dim=-2)  # (..., H, hd)
    return k.flatten(-2)  # (..., H * hd)
