"""Load the trained policy, a frozen reference (only when KL needs it) and the tokenizer."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str, *, trainable: bool, gradient_checkpointing: bool = False):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    if trainable:
        model.train()
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
    else:
        model.eval().requires_grad_(False)
    return model
