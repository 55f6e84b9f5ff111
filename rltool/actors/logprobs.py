"""Per-token log-probs of completions under a causal LM, the trainer's side of every ratio."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from rltool.actors.chunked_logp import ENTROPY, LOGP, LOGP_T1, chunked_stats, head_replaced, lm_head


class TokenLogps(NamedTuple):
    """What one forward gives the update phase; all (B, T) on the batch's device."""

    logp: Tensor
    """log pi_T(token): the temperature-scaled distribution the sampler drew from (ratios, KL)."""
    entropy: Optional[Tensor]
    """Entropy of the temperature-scaled distribution (no grad), when asked for."""
    logp_t1: Optional[Tensor]
    """log pi(token) at temperature 1, when asked for: the model's own distribution, which SFT
    terms (ERL internalization) train. The same tensor as `logp` when temperature == 1."""


def completion_logp(model, input_ids: Tensor, attention_mask: Tensor, prompt_width: int, temperature: float = 1.0,
                    with_entropy: bool = False, with_t1: bool = False, impl: str = "chunked",
                    chunk_size: int = 256) -> TokenLogps:
    """input_ids (B, P+T): prompts left-padded to P, completions right-padded to T.

    Because every completion starts at column P, only the last T+1 positions need logits
    (`logits_to_keep`), which saves the (B, P, V) prompt logits. Temperature matches the sampler's,
    so ratios compare like with like.

    impl="chunked" (default) never forms the (B, T, V) logits: the head's input is taken from the
    model's own forward and log-probs and entropy are computed `chunk_size` tokens at a time, the
    backward recomputing each chunk (rltool/actors/chunked_logp.py). Same values and gradients as
    impl="plain", which stays as the reference. Models whose head is not a plain bias-free Linear,
    or which transform logits after it (soft-capping), take the plain path.
    """
    T = input_ids.shape[1] - prompt_width
    # The batch stays where collate built it; a model elsewhere (QLoRA's 4-bit base is on CUDA) gets
    # copies, and logp comes back to the batch's device. A no-op when both are on the same device.
    batch_device = input_ids.device
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+T): left padding needs explicit positions
    head = lm_head(model) if impl == "chunked" else None
    if head is not None:
        t1 = with_t1 and temperature != 1.0
        fn = chunked_stats(input_ids[:, prompt_width:], temperature, chunk_size, with_entropy, t1)
        with head_replaced(head, fn):
            stats = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=T + 1, use_cache=False).logits.to(batch_device)  # (B, T, 3)
        logp = stats[..., LOGP]
        return TokenLogps(logp, stats[..., ENTROPY].detach() if with_entropy else None,
                          (stats[..., LOGP_T1] if t1 else logp) if with_t1 else None)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=T + 1, use_cache=False)
    targets = input_ids[:, prompt_width:, None]  # (B, T, 1)
    raw = out.logits[:, :-1].float()  # (B, T, V): position t predicts token P+t
    logits = raw / temperature if temperature != 1.0 else raw
    logz = torch.logsumexp(logits, dim=-1)  # (B, T)
    logp = logits.gather(-1, targets).squeeze(-1) - logz  # (B, T)
    entropy = logp_t1 = None
    if with_entropy:
        with torch.no_grad():
            entropy = (logz - (torch.softmax(logits, -1) * logits).sum(-1)).to(batch_device)  # (B, T)
    if with_t1:
        logp_t1 = logp if logits is raw else raw.gather(-1, targets).squeeze(-1) - torch.logsumexp(raw, dim=-1)
        logp_t1 = logp_t1.to(batch_device)
    return TokenLogps(logp.to(batch_device), entropy, logp_t1)
