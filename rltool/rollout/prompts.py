"""Chat messages -> prompt token ids, the one place the chat template is applied."""
from __future__ import annotations


def encode_chat(tokenizer, messages: list[dict], max_prompt_len: int) -> list[int]:
    """Apply the chat template with the assistant turn opened; keep the last `max_prompt_len` tokens."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers >= 5 returns a BatchEncoding
        ids = list(ids["input_ids"])
    return ids[-max_prompt_len:]
