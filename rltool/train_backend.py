"""Several ranks through accelerate + DeepSpeed ZeRO-3: setup, backward/step, and the weights in chunks.

One process (hardware.zero_stage=0) uses none of this: `backward` and `step` fall back to plain
PyTorch. Under ZeRO-3 every rank holds a shard of the parameters, gradients and Adam state, and
every forward/backward is collective (each layer's parameters are all-gathered as it runs), so all
ranks must run the same number of forward and backward passes: `forward_count` agrees on one and
callers pad with zero-weight passes. DeepSpeed averages gradients over ranks while rltool's loss
normalisers are global totals, so each rank's loss is multiplied by the world size (`loss_scale`).
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Iterator

import torch

from rltool import dist
from rltool.actors.lora import named_weights_for_engine
from rltool.config import Config, ConfigError


def start(cfg: Config):
    """The Accelerator of a launched run (None for one plain process). Its DeepSpeed config is
    completed from rltool's config before anything is prepared. The CLI has already set
    hardware.num_processes to the launcher's world size (and checked the batch divides over it)."""
    from rltool.hardware import resolve_hardware
    from rltool.launch import launched

    if not launched():
        return None
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    # hardware.timeout_s: how long a barrier waits for a rank that died (e.g. mid-save) before failing
    accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=dist.timeout(cfg.hardware))])
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise ConfigError("accelerate launch: rltool trains several ranks with DeepSpeed ZeRO-3 only; "
                          "launch with --config_file zero3.yaml (or run `rltool train hardware=cpu_zero3|gpu8`)")
    world = dist.world_size()  # accelerate reports num_processes=1 for DeepSpeed on CPU: torch.distributed knows
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("zero_optimization", {}).get("stage") != 3:
        raise ConfigError(f"accelerate config: zero_stage={ds.get('zero_optimization', {}).get('stage')}; "
                          "rltool supports ZeRO stage 3 (zero3.yaml)")
    ds["train_micro_batch_size_per_gpu"] = cfg.trainer.micro_batch_size
    ds["gradient_accumulation_steps"] = 1  # micro-batches are accumulated by rltool (set_gradient_accumulation_boundary)
    ds["gradient_clipping"] = cfg.trainer.grad_clip
    ds["train_batch_size"] = cfg.trainer.micro_batch_size * world
    if resolve_hardware(cfg.hardware).dtype == "bfloat16":  # bf16 weights, fp32 master copy and Adam state
        ds["bf16"] = {"enabled": True}
    return accelerator


def make_optimizer(params, cfg: Config):
    """AdamW; DeepSpeed's CPU Adam when its state is offloaded to CPU (ZeRO-Offload)."""
    t = cfg.trainer
    if cfg.hardware.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=t.lr, weight_decay=t.weight_decay, adamw_mode=True)
    # fused: one kernel for the whole update (CPU and CUDA), as TRL's default adamw_torch_fused
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)


def prepare(accelerator, model, optimizer):
    """-> (DeepSpeedEngine, its optimizer): parameters, gradients and Adam state sharded over ranks.

    One DeepSpeed engine per trainable actor, all with the run's DeepSpeed config: the first through
    accelerate, the others through `deepspeed.initialize` directly (accelerate's `prepare` holds one
    DeepSpeed model); rltool drives each engine's backward and step itself, so they behave the same."""
    if accelerator is None:
        return model, optimizer
    if not any(is_deepspeed(m) for m in accelerator._models):
        return accelerator.prepare(model, optimizer)
    import deepspeed

    engine, optimizer, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                 config=accelerator.state.deepspeed_plugin.deepspeed_config)
    return engine, optimizer


def prepare_frozen(accelerator, model):
    """A frozen model (the KL reference) sharded the same way, with no optimizer (as TRL does)."""
    if accelerator is None:
        return model
    import deepspeed

    ds = {k: v for k, v in accelerator.state.deepspeed_plugin.deepspeed_config.items()
          if k not in ("optimizer", "scheduler")}
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine


def torch_optimizer(model, optimizer):
    """The torch optimizer whose step() actually runs (DeepSpeed calls its inner one): the one an
    LR scheduler must wrap."""
    return model.optimizer.optimizer if is_deepspeed(model) else optimizer


def is_deepspeed(model) -> bool:
    ds = sys.modules.get("deepspeed")
    return ds is not None and isinstance(model, ds.DeepSpeedEngine)


def unwrap(model):
    """The HF / PEFT model inside a DeepSpeedEngine (ZeRO-3 hooks stay on its modules)."""
    return model.module if is_deepspeed(model) else model


def forward_count(n: int, model) -> int:
    """How many forward passes every rank runs: its own count, or under ZeRO-3 the largest over ranks."""
    return dist.max_over_ranks(max(n, 1)) if is_deepspeed(model) else n


def loss_scale(model) -> float:
    """DeepSpeed averages gradients over ranks; rltool's losses are already global sums' shares."""
    return float(dist.world_size()) if is_deepspeed(model) else 1.0


def zero_grad(model, optimizer) -> None:
    if not is_deepspeed(model):  # DeepSpeed's step() zeroes its gradient partitions itself
        optimizer.zero_grad(set_to_none=True)


def backward(model, loss: torch.Tensor, *, last: bool) -> None:
    """Accumulate one micro-batch; under ZeRO-3 the gradient partitions are reduced over ranks."""
    if is_deepspeed(model):
        model.set_gradient_accumulation_boundary(last)
        model.backward(loss)
    else:
        loss.backward()


SKIPPED_NONFINITE = [0]
"""Updates `step` skipped since the last `pop_skipped_nonfinite()` (a list: mutable module state,
read once per training step into `update/skipped_nonfinite`)."""


def step(model, optimizer, grad_clip: float) -> torch.Tensor:
    """Clip to grad_clip, take the optimizer step; returns the global gradient norm before clipping.

    A nan/inf gradient (a nan loss gives one too) skips the step: gradients are zeroed and the
    weights and Adam state stay as they were. Unchecked, AdamW would write nan into every weight,
    which would then be synced to the engine and saved. Under ZeRO-3 each rank checks its own
    gradient shard and the flag is all-reduced, so every rank skips together."""
    if is_deepspeed(model):
        if not _finite_shards(model):
            # as DeepSpeed after its own step: micro_step_id=0, so the next backward overwrites the
            # gradient partitions instead of adding to the nan ones
            model.optimizer.zero_grad()
            SKIPPED_NONFINITE[0] += 1
            return torch.tensor(float("nan"))
        model.step()  # clipping (gradient_clipping=trainer.grad_clip), Adam on each shard, zero grads
        return torch.tensor(float(model.get_global_grad_norm() or 0.0))
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # nan/inf if any gradient is
    if not torch.isfinite(norm):  # a device sync, once per optimizer step
        optimizer.zero_grad(set_to_none=True)
        SKIPPED_NONFINITE[0] += 1
        return norm
    optimizer.step()
    return norm


def pop_skipped_nonfinite() -> float:
    """`update/skipped_nonfinite` for the step just taken: how many updates were skipped, then 0."""
    n, SKIPPED_NONFINITE[0] = SKIPPED_NONFINITE[0], 0
    return float(n)


def _finite_shards(model) -> bool:
    """Every rank's local gradient partition is finite (all-reduced: one rank's nan skips all)."""
    from deepspeed.utils import safe_get_local_grad

    bad = 0.0
    for p in model.parameters():
        if p.requires_grad:
            g = safe_get_local_grad(p)
            if g is not None and not bool(torch.isfinite(g).all()):
                bad = 1.0
                break
    return dist.sum_over_ranks(bad) == 0


def weights_for_engine(model, *, remove_duplicate: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs the rollout engine loads after a step (merged for LoRA).

    Under ZeRO-3 parameters are gathered one block at a time (a decoder layer, the embedding, the
    head): no rank ever holds the whole model, and each yielded tensor is a copy that outlives the
    gather. Every rank runs this in lockstep (the gathers are collective)."""
    inner = unwrap(model)
    if not is_deepspeed(model):
        yield from named_weights_for_engine(inner, remove_duplicate=remove_duplicate)
        return
    import deepspeed

    for block in blocks(inner):
        ids = {id(p) for p in block}
        with deepspeed.zero.GatheredParameters(block, modifier_rank=None):
            for name, t in named_weights_for_engine(inner, only=ids, remove_duplicate=remove_duplicate):
                yield name, t.detach().clone()


def blocks(model) -> list[list[torch.nn.Parameter]]:
    """Parameters grouped by the first numbered module in their name (`...layers.3.`), in model
    order; names outside any numbered module (embedding, final norm, head) each form their own block.
    A LoRA layer's A and B sit in the same block as the weight they merge into."""
    import re

    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        match = re.match(r"(.*?\.\d+)\.", name)
        groups.setdefault(match.group(1) if match else name, []).append(p)
    return list(groups.values())


def full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The whole model as plain (merged) HF weights on rank 0's CPU for saving; None elsewhere.
    Collective: every rank must call it."""
    keep = dist.rank() == 0
    state = {}
    for name, t in weights_for_engine(model, remove_duplicate=True):
        if keep:
            state[name] = t.cpu()
    return state if keep else None


def offloaded(model, hw) -> object:
    """GPU + hardware.offload_between_phases: the trainer's shards live in CPU memory while vLLM
    generates (DeepSpeed offload_states / reload_states); elsewhere a no-op context."""
    if not (is_deepspeed(model) and hw.device == "cuda" and hw.cfg.offload_between_phases):
        return nullcontext()
    return _Offloaded(model)


class _Offloaded:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.model.offload_states()
        return self

    def __exit__(self, *exc):
        self.model.reload_states()
        return False
