"""Load the trained policy, a frozen reference (only when KL needs it) and the tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rltool import ckpt
from rltool.actors import lora
from rltool.config import ActorConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str, *, trainable: bool, gradient_checkpointing: bool = False,
               device: str | None = "cpu"):
    """device=None leaves placement to DeepSpeed (under ZeRO-3 the weights may already be partitioned)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    model = model.to(device) if device else model
    if trainable:
        model.train()
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
    else:
        model.eval().requires_grad_(False)
    return model


def load_policy(cfg: ActorConfig, dtype: str, *, base_dir: str, resume_from: Path | None = None,
                device: str | None = "cpu", gradient_checkpointing: bool = False, seed: int = 0):
    """The trained policy: the model at `base_dir` (actors.path), wrapped with a fresh LoRA adapter
    when actors.lora.r > 0 (on a 4-bit base with QLoRA). On resume the checkpoint decides, as for
    any architecture: with an adapter/ it is base + that adapter, without it the full weights in model/.
    """
    gradient_checkpointing = gradient_checkpointing or cfg.gradient_checkpointing  # hardware profile or actors
    adapter_dir = ckpt.adapter_dir(resume_from) if resume_from else None
    if adapter_dir is None and (resume_from or cfg.lora.r == 0):  # full fine-tuning
        path = str(ckpt.model_dir(resume_from)) if resume_from else base_dir
        return load_model(path, dtype, trainable=True, gradient_checkpointing=gradient_checkpointing, device=device)
    if cfg.qlora:
        base = lora.load_4bit(base_dir, DTYPES[dtype], gradient_checkpointing=gradient_checkpointing)
    else:
        base = load_model(base_dir, dtype, trainable=True, gradient_checkpointing=gradient_checkpointing,
                          device=device)
    return lora.add_adapter(base, cfg.lora, adapter_dir, seed=seed)


def load_reference(policy, path: str, dtype: str, device: str | None = "cpu"):
    """The frozen KL reference: the base weights at `path`; for a LoRA policy, the policy itself with
    its adapter switched off (the base is already inside it, so no second copy is loaded)."""
    if lora.is_peft(policy):
        return lora.AdapterDisabled(policy)
    return load_model(path, dtype, trainable=False, device=device)
