"""Query and key vectors for the selector: the MiniLM sentence encoder, or the policy's own attention.

Both take token ids (of the policy's tokenizer) and their texts and return (N, d) float32:
  MiniLMVectors   all-MiniLM-L6-v2 on the texts (unit vectors, d = 384); frozen.
  HiddenVectors   the policy's hidden states at decoder layer L (after that layer's input norm,
                  mean-pooled over the text's own tokens, each text alone), through layer L's
                  q_proj (queries) or k_proj (keys, kv heads repeated for GQA; selection.py). Under
                  LoRA the projections include the adapter, so they move as the policy trains.
`queries` / `keys` run without gradient (the rollout); `pooled` + `project_*` keep it, for the
selection term of the loss (algo.agrl.learn_selection, rltool/agrl/rollout.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rltool.agrl.selection import mean_pool, repeat_kv_heads
from rltool.config import ConfigError


class MiniLMVectors:
    def __init__(self):
        from rltool.actors.text_encoder import MiniLMEncoder

        self.encoder = MiniLMEncoder()

    def queries(self, ids: list[list[int]], texts: list[str]) -> Tensor:
        return self.encoder(texts)

    def keys(self, ids: list[list[int]], texts: list[str]) -> Tensor:
        return self.encoder(texts)


def decoder_layers(model):
    """The decoder layer list of a HF causal LM, through PEFT and DeepSpeed wrappers."""
    inner = getattr(model, "module", model)  # DeepSpeed engine
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT
    return inner.model.layers, inner.config


class HiddenVectors:
    def __init__(self, model, layer: int = -1):
        self.model = model
        layers, config = decoder_layers(model)
        self.index = len(layers) // 2 if layer < 0 else layer
        if not 0 <= self.index < len(layers):
            raise ConfigError(f"algo.agrl.layer={layer}: the model has decoder layers 0..{len(layers) - 1} (-1: the middle one)")
        self.layer = layers[self.index]
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads

    def pooled(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """input_ids, mask (N, L) right-padded -> (N, D): the normed input of layer L, mean-pooled over
        each text's tokens. Differentiable (algo.agrl.learn_selection trains through it)."""
        hidden = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        normed = self.layer.input_layernorm(hidden[self.index])  # (N, L, D): what layer L's attention reads
        return mean_pool(normed.float(), mask)

    def project_queries(self, pooled: Tensor) -> Tensor:
        q_proj = self.layer.self_attn.q_proj
        return q_proj(pooled.to(q_proj.weight.dtype)).float()  # (N, H * hd)

    def project_keys(self, pooled: Tensor) -> Tensor:
        k_proj = self.layer.self_attn.k_proj
        return repeat_kv_heads(k_proj(pooled.to(k_proj.weight.dtype)).float(), self.heads, self.kv_heads)  # (N, H * hd)

    def _padded(self, ids: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(1, max((len(x) for x in ids), default=1))
        device = next(self.model.parameters()).device
        input_ids = torch.zeros(len(ids), width, dtype=torch.long, device=device)  # (N, L)
        mask = torch.zeros(len(ids), width, dtype=torch.long, device=device)  # (N, L)
        for i, x in enumerate(ids):
            x = x or [0]  # an empty query still gets a vector (of token 0)
            input_ids[i, : len(x)] = torch.tensor(x, device=device)
            mask[i, : len(x)] = 1
        return input_ids, mask

    @torch.no_grad()
    def queries(self, ids: list[list[int]], texts: list[str]) -> Tensor:
        return self.project_queries(self.pooled(*self._padded(ids))).cpu()

    @torch.no_grad()
    def keys(self, ids: list[list[int]], texts: list[str]) -> Tensor:
        return self.project_keys(self.pooled(*self._padded(ids))).cpu()


def make_vectors(kind: str, model, layer: int):
    return MiniLMVectors() if kind == "minilm" else HiddenVectors(model, layer)
