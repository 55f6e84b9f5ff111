"""Several LoRA actors on one base model served by one vLLM engine (vLLM multi-LoRA).

With `rollout.multi_lora=true`, trainable LoRA actors whose base model is the same share one engine
started with `enable_lora`; each actor generates through its own `AdapterView`, which passes that
actor's `LoRARequest`. The engine holds the base weights and one KV cache once, however many actors
there are (without it every trainable actor has an engine with its merged weights).

After each update the view writes the actor's adapter (a few MB, PEFT's file layout) and serves it
under a fresh LoRA id, name and path, removing the previous one: vLLM caches an adapter by id and
keys prefix-cache blocks by its name and path, so a reused id could serve stale weights or KV.
"""
from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from rltool.engines.engine import Sampling
from rltool.records import Completion

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The `max_lora_rank` values vLLM accepts."""


def engine_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank `r`."""
    return next(k for k in VLLM_LORA_RANKS if k >= r)


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the names PEFT saves them with (`...q_proj.lora_A.weight`, no
    adapter name). Under ZeRO-3 the adapter is gathered (every rank in lockstep); it is small."""
    from peft import get_peft_model_state_dict

    from rltool.actors.lora import LORA_PARAM
    from rltool.train_backend import is_deepspeed, unwrap

    inner = unwrap(model)
    params = {n: p for n, p in inner.named_parameters() if LORA_PARAM.search(n)}
    if is_deepspeed(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            state = {n: p.detach().clone().cpu() for n, p in params.items()}
    else:
        state = {n: p.detach().clone().cpu() for n, p in params.items()}
    return get_peft_model_state_dict(inner, state_dict=state, adapter_name=inner.active_adapter)


def write_adapter(model, path: Path) -> None:
    """`model`'s adapter as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.torch import save_file

    from rltool.train_backend import unwrap

    inner = unwrap(model)
    path.mkdir(parents=True)
    inner.peft_config[inner.active_adapter].save_pretrained(str(path))
    save_file({k: v.contiguous() for k, v in adapter_state(model).items()}, str(path / "adapter_model.safetensors"))


class AdapterView:
    """One actor's engine: the shared multi-LoRA engine, generating with this actor's adapter."""

    def __init__(self, engine, name: str, lora_ids: Iterator[int]):
        self.engine, self.name, self.lora_ids = engine, name, lora_ids
        self.root = Path(tempfile.mkdtemp(prefix=f"rltool-lora-{name}-"))
        self.request = None  # None: the base model, until the first sync
        self.version = 0

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        return self.engine.generate(prompts, sampling, lora=self.request)

    def prompt_logprobs(self, prompt: list[int], completion: list[int]) -> list[float]:
        return self.engine.prompt_logprobs(prompt, completion, lora=self.request)

    @property
    def base(self):
        """The shared engine: it sleeps and wakes once for all its views (rltool/engines/lifecycle.py)."""
        return self.engine

    def load_adapter(self, model) -> None:
        """Serve `model`'s current adapter from now on (called by `sync_weights` after each update)."""
        from vllm.lora.request import LoRARequest

        self.version += 1
        path = self.root / f"v{self.version}"
        write_adapter(model, path)
        old, self.request = self.request, LoRARequest(f"{self.name}-v{self.version}", next(self.lora_ids), str(path))
        if old is not None:
            self.engine.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def close(self) -> None:
        """Closes the shared engine (idempotent: the other views' close is then a no-op) and the adapters."""
        self.engine.close()
        shutil.rmtree(self.root, ignore_errors=True)


def shared_adapter_views(engine, names: list[str]) -> dict[str, AdapterView]:
    """One view per actor on `engine`, with LoRA ids unique within it."""
    ids = itertools.count(1)
    return {name: AdapterView(engine, name, ids) for name in names}
