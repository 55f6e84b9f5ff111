"""The few collectives the loop needs, each an identity in a single process.

Data parallel: each rank rolls out its share of prompts, but advantages are group statistics and
the loss normalisers are step totals, so both are computed over every rank's samples. Ranks talk
through torch.distributed (gloo on CPU, NCCL on GPU), whichever launcher (accelerate, torchrun)
started them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_cat(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate a 1-D tensor over ranks in rank order (sizes may differ: DAPO drops groups per
    rank). Returns the whole tensor and the offset of this rank's part in it."""
    if world_size() == 1:
        return x, 0
    if x.dtype == torch.bool:  # gloo has no bool collectives
        whole, offset = gather_cat(x.to(torch.uint8))
        return whole.bool(), offset
    sizes = [None] * world_size()
    dist.all_gather_object(sizes, x.numel())
    padded = torch.zeros(max(sizes), dtype=x.dtype, device=x.device)
    padded[:x.numel()] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sum(sizes[:rank()])


def sum_over_ranks(value: float) -> float:
    """A step total (sequence count, token count) over every rank."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)
