"""Per-token log-probs of completions under a causal LM, the trainer's side of every ratio."""
from __future__ import annotations

import torch
from torch import Tensor


def completion_logp(model, input_ids: Tensor, attention_mask: Tensor, prompt_width: int, temperature: float = 1.0,
                    with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """input_ids (B, P+T): prompts left-padded to P, completions right-padded to T.

    Because every completion starts at column P, only the last T+1 positions need logits
    (`logits_to_keep`), which saves the (B, P, V) prompt logits. Returns logp (B, T) and, if asked,
    the entropy (B, T) of the temperature-scaled distribution. Temperature matches the sampler's,
    so ratios compare like with like.
    """
    T = input_ids.shape[1] - prompt_width
    # The batch stays where collate built it; a model elsewhere (QLoRA's 4-bit base is on CUDA) gets
    # copies, and logp comes back to the batch's device. A no-op when both are on the same device.
    batch_device = input_ids.device
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+T): left padding needs explicit positions
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V): position t predicts token P+t
    targets = input_ids[:, prompt_width:]  # (B, T)
    logz = torch.logsumexp(logits, dim=-1)  # (B, T)
    logp = logits.gather(-1, targets[..., None]).squeeze(-1) - logz  # (B, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = (logz - (torch.softmax(logits, -1) * logits).sum(-1)).to(batch_device)  # (B, T)
    return logp.to(batch_device), entropy
