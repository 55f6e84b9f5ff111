"""Score orderings: mean value log-prob per step under a causal LM, one forward per episode.

The sequence of an ordering is `prefix k1 v1 sep k2 v2 ... kT vT` (reward.episode_input); the
prefix is a neutral header, never the article's title (a family article's title names the founder,
which would give every "grandparent" value away).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rltool import train_backend
from rltool.agrl.kv import KVPair
from rltool.agrl.reward import episode_input, gather_value_logp, pad_positions, step_value_logp

PREFIX = "Notes:\n"
SEP = "\n"


class OrderingScorer:
    """`scorer(model, orderings) -> (E, T)` mean log p(v_t | what was read before, k_t) per step."""

    def __init__(self, tokenizer, micro_batch: int = 8):
        self.prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
        self.sep = tokenizer.encode(SEP, add_special_tokens=False)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.micro_batch = micro_batch

    @torch.no_grad()
    def __call__(self, model, orderings: Sequence[Sequence[KVPair]]) -> Tensor:
        if not orderings:
            return torch.zeros(0, 0)
        T = len(orderings[0])
        rows = [episode_input(o, self.prefix, self.sep) for o in orderings]
        device = next(model.parameters()).device if hasattr(model, "parameters") else model.device
        out = []
        starts = list(range(0, len(rows), self.micro_batch))
        for start in starts:
            part = rows[start:start + self.micro_batch]
            width = max(len(ids) for ids, _ in part)
            ids = torch.full((len(part), width), self.pad, dtype=torch.long)  # (b, L), right-padded
            mask = torch.zeros(len(part), width, dtype=torch.long)  # (b, L)
            for i, (x, _) in enumerate(part):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            positions, pos_mask = pad_positions([p for _, steps in part for p in steps])  # (b*T, V)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (b, L, vocab)
            V = positions.shape[-1]
            logp = gather_value_logp(logits, ids.to(device), positions.view(len(part), T * V).to(device)).cpu()  # (b, T*V)
            out.append(step_value_logp(logp.view(len(part) * T, V), pos_mask, T))  # (b, T)
        for _ in range(train_backend.forward_count(len(starts), model) - len(starts)):  # ZeRO-3: forwards are collective
            model(input_ids=ids[:1].to(device), attention_mask=mask[:1].to(device))
        return torch.cat(out)
