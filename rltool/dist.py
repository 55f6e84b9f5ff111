"""The few collectives the loop needs, each an identity in a single process.

Data parallel: each rank rolls out its share of prompts, but advantages are group statistics and
the loss normalisers are step totals, so both are computed over every rank's samples. Ranks talk
through torch.distributed (gloo on CPU, NCCL on GPU), whichever launcher (accelerate, torchrun)
started them.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


"""torch's own default for gloo; NCCL's is 10 min. Every collective and barrier waits this long
for a rank that failed (during a save, say) before the survivors fail too."""


def timeout(hardware) -> timedelta:
    """The process-group timeout: `hardware.timeout_s`."""
    return timedelta(seconds=float(hardware.timeout_s))


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


def max_over_ranks(value: int) -> int:
    """The largest of one integer over ranks (how many forward passes ZeRO-3 ranks all run)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def broadcast(obj):
    """Rank 0's value of a picklable object on every rank (the run directory, a timestamp)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_main_first(fn):
    """fn() on each machine's first rank, then on the others (e.g. filling a per-machine cache)."""
    if world_size() == 1:
        return fn()
    first = os.environ.get("LOCAL_RANK", "0") == "0"
    result = fn() if first else None
    dist.barrier()
    return result if first else fn()


def all_gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank (ERL's new lessons of a step)."""
    if world_size() == 1:
        return [obj]
    every = [None] * world_size()
    dist.all_gather_object(every, obj)
    return every


def combine_metrics(metrics: dict[str, float], summed: tuple[str, ...] = ()) -> dict[str, float]:
    """One step's metrics over every rank: keys in `summed` added up, the rest averaged over the
    ranks that logged them (a rank whose micro-batches were all padding logs no loss parts)."""
    if world_size() == 1:
        return metrics
    every = [None] * world_size()
    dist.all_gather_object(every, metrics)
    out = {}
    for key in dict.fromkeys(k for m in every for k in m):
        values = [m[key] for m in every if key in m]
        out[key] = sum(values) if key in summed else sum(values) / len(values)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
