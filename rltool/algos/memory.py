"""ERL's cross-episode memory: reflections that led to a successful retry, retrieved into later
reflection prompts.

A FIFO of `size` entries (prompt text, reflection text, step); the oldest entry is dropped when
full, and size 0 never stores. Retrieval is `recency` (newest first) or `similarity` (cosine
similarity between the query prompt's embedding and each stored prompt's embedding; ties go to the
newer entry). The embedding function is injected, so this file needs no model: ERL passes
`MiniLMEncoder`, tests pass hand-made vectors.

Embeddings are computed once, on `add`, and kept in `state_dict` as plain float lists (50 x 384
floats is small), so resuming never needs the encoder to rebuild them. Entries saved without one
(the run used recency retrieval) are embedded on load when the new run uses similarity.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Embed = Callable[[list[str]], Tensor]
"""texts (N,) -> embeddings (N, D)."""


@dataclass
class Entry:
    prompt: str
    reflection: str
    step: int
    embedding: Optional[list[float]] = None
    """Embedding of `prompt`; None under recency retrieval (never computed)."""


class Memory:
    def __init__(self, size: int, retrieval: str = "recency", embed: Optional[Embed] = None):
        if retrieval not in ("recency", "similarity"):
            raise ValueError(f"retrieval={retrieval!r}: must be recency or similarity")
        if retrieval == "similarity" and embed is None and size > 0:
            raise ValueError("similarity retrieval needs an embed function")
        self.size = size
        self.retrieval = retrieval
        self.embed = embed
        self.entries: deque[Entry] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, prompt: str, reflection: str, step: int) -> None:
        if self.size == 0:
            return
        embedding = self.embed([prompt])[0].tolist() if self.retrieval == "similarity" else None
        self.entries.append(Entry(prompt, reflection, step, embedding))

    def retrieve(self, prompt: str, k: int) -> list[str]:
        """Up to k stored reflections for `prompt`, best first."""
        if k <= 0 or not self.entries:
            return []
        newest = list(reversed(self.entries))
        if self.retrieval == "recency":
            return [e.reflection for e in newest[:k]]
        stored = torch.tensor([e.embedding for e in newest])  # (M, D)
        query = self.embed([prompt]).to(stored.dtype)  # (1, D)
        sim = F.cosine_similarity(stored, query, dim=1)  # (M,)
        # stable: equal similarity keeps newest-first order
        order = torch.sort(sim, descending=True, stable=True).indices[:k]
        return [newest[i].reflection for i in order.tolist()]

    def state_dict(self) -> dict:
        return {"entries": [asdict(e) for e in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        # deque(maxlen=size) keeps the newest entries if this run's memory is smaller
        self.entries = deque((Entry(**e) for e in state["entries"]), maxlen=self.size)
        missing = [e for e in self.entries if e.embedding is None]
        if self.retrieval == "similarity" and missing:
            for e, emb in zip(missing, self.embed([e.prompt for e in missing]).tolist()):
                e.embedding = emb
