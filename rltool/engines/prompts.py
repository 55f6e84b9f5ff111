"""Chat messages -> prompt token ids, the one place the chat template is applied (plain text for a
base model that has none).

A prompt is never cut silently: cutting from the left drops the chat header and the task (the
model then answers something it never saw, and is trained on it). Dataset prompts longer than
`rollout.max_prompt_len` are left out at setup and counted (`fitting_examples`); prompts an
algorithm builds (ERL's reflections) are built within the budget by shortening their own parts.
"""
from __future__ import annotations

from typing import Callable


class PromptTooLong(ValueError):
    """A prompt over rollout.max_prompt_len reached the engine: a caller should have skipped or shortened it."""


def encode_chat(tokenizer, messages: list[dict], max_prompt_len: int | None = None) -> list[int]:
    """Apply the chat template with the assistant turn opened; a base model without a chat template gets
    the plain text (`plain_text`). Raises PromptTooLong past max_prompt_len."""
    if getattr(tokenizer, "chat_template", None) is None:
        ids = tokenizer(plain_text(messages))["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers >= 5 returns a BatchEncoding
        ids = list(ids["input_ids"])
    if max_prompt_len is not None and len(ids) > max_prompt_len:
        raise PromptTooLong(f"a prompt of {len(ids)} tokens is longer than rollout.max_prompt_len={max_prompt_len}")
    return ids


def plain_text(messages: list[dict]) -> str:
    """The prompt a base model continues: the messages' contents, blank-line separated, no role markers
    (a string prompt in the data reaches the model as written, as TRL passes non-conversational prompts)."""
    return "\n\n".join(m["content"] for m in messages)


def fitting_examples(examples: list, messages: Callable[[object], list[dict]], tokenizer,
                     max_prompt_len: int) -> tuple[list, int]:
    """The examples whose chat prompt fits in max_prompt_len tokens, and how many were left out."""
    kept = [e for e in examples if len(encode_chat(tokenizer, messages(e))) <= max_prompt_len]
    return kept, len(examples) - len(kept)
