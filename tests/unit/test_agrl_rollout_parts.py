"""The pieces AGRL's rollout is built from, without vLLM: fact pairs, the article environment,
ordering scores on a hand-made model, episode bookkeeping with scripted queries, hidden-state
vectors against what attention itself reads, and the shipped algo=agrl settings moving query
tokens the way the reward says."""
import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from rltool import update
from rltool.agrl.articles import Article, Fact, fact_pairs, train_articles
from rltool.agrl.embed import HiddenVectors
from rltool.agrl.episodes import Episode, play_episodes
from rltool.agrl.filter import TrajectoryFilter
from rltool.agrl.kv import KVPair
from rltool.agrl.scoring import OrderingScorer
from rltool.records import Completion, Sample, collate
from rltool.config import RolloutConfig, TrainerConfig
from rltool.agrl.article_env import ArticleCurriculum
from rltool.schemas import algo_config, env_config

WORDS = {}


def encode(text: str) -> list[int]:
    """A whitespace 'tokenizer': each new word gets the next id (spaces are not tokens)."""
    return [WORDS.setdefault(w, len(WORDS)) for w in text.split()]


def test_fact_pairs_split_each_fact_before_its_last_word():
    article = Article("a", "t", (Fact("Ana is the parent of Bo.", ()), Fact("The sibling of Bo is Cy.", (0,))), ())
    pairs = fact_pairs(article, encode)
    assert [len(p.key) for p in pairs] == [5, 5] and [len(p.value) for p in pairs] == [1, 1]
    assert pairs[0].value == tuple(encode("Bo.")) and pairs[1].key == tuple(encode("The sibling of Bo is"))
    assert [p.labels for p in pairs] == [(0,), (1,)] and [p.start for p in pairs] == [0, 1]
    with pytest.raises(ValueError, match="one word"):
        fact_pairs(Article("b", "t", (Fact("Alone", ()),), ()), encode)


def test_article_env_pairs_are_seeded_in_article_order_and_know_their_roots():
    env = ArticleCurriculum(env_config(name="article_curriculum", train_size=20, eval_size=5, pairs_per_episode=4))
    example = env.train_examples()[0]
    article = example.meta["article"]
    a, b = env.pairs(example, encode, random.Random(3)), env.pairs(example, encode, random.Random(3))
    assert a == b and len(a) == 4 and [p.start for p in a] == sorted(p.start for p in a)
    assert [env.is_root(example, p) for p in a] == [article.facts[p.start].root for p in a]
    assert env.pairs(example, encode, None) == fact_pairs(article, encode)[:4]
    too_many = ArticleCurriculum(env_config(name="article_curriculum", train_size=2, eval_size=2, pairs_per_episode=99))
    assert too_many.pairs(too_many.train_examples()[0], encode, random.Random(0)) is None
    assert {e.id for e in env.train_examples()}.isdisjoint(e.id for e in env.eval_examples())
    prompt = env.messages(example, ["Ana is the parent of Bo."])
    assert example.question in prompt[0]["content"] and "Ana is the parent of Bo." in prompt[1]["content"]
    tokens = ArticleCurriculum(env_config(name="article_curriculum", train_size=2, eval_size=2, pair_unit="tokens",
                                         key_tokens=3, value_tokens=2, pairs_per_episode=2))
    assert all(len(p.key) == 3 and len(p.value) == 2 for p in tokens.pairs(tokens.train_examples()[0], encode, None))


class CountingModel(torch.nn.Module):
    """logits[j] = TABLE[ids[j]] + BONUS * (how often token 3 occurred at or before j) on column 5:
    reading the value 3 makes the value 5 likelier later, so order matters."""

    TABLE = torch.tensor([[0.0, 1.0, 0.5, 2.0, 0.0, -1.0]] * 6) + torch.eye(6)
    BONUS = 1.5

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        logits = self.TABLE[input_ids].clone()  # (B, L, 6)
        logits[..., 5] += self.BONUS * (input_ids == 3).cumsum(-1)
        return SimpleNamespace(logits=logits)


class PrefixTokenizer:
    pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return {"Notes:\n": [0], "\n": [1]}[text]


def lp(row: torch.Tensor, token: int) -> float:
    return float(torch.log_softmax(row, -1)[token])


def test_ordering_scores_by_hand_and_order_matters():
    A, B = KVPair((2,), (3,), 0), KVPair((4, 4), (5,), 1)  # B's key is longer: rows get padded
    scores = OrderingScorer(PrefixTokenizer(), micro_batch=1)(CountingModel(), [[A, B], [B, A]])
    t = CountingModel.TABLE
    bonus = torch.tensor([0, 0, 0, 0, 0, CountingModel.BONUS])
    expected = torch.tensor([[lp(t[2], 3), lp(t[4] + bonus, 5)],  # A first: 3 was read before 5
                             [lp(t[4], 5), lp(t[2], 3)]])
    assert_close(scores, expected)
    assert scores[0].mean() > scores[1].mean()


class ScriptedEngine:
    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        return [[Completion([7 + i], [-1.0], f"q{i}", False)] for i in range(len(prompts))]


class FixedVectors:
    """Keys: one-hot by their first token. Queries: always the vector pointing at key token 12."""

    def keys(self, ids, texts):
        return torch.nn.functional.one_hot(torch.tensor([x[0] - 10 for x in ids]), 4).float()

    def queries(self, ids, texts):
        return torch.tensor([[0.0, 0.0, 1.0, 0.5]] * len(ids))


def test_episodes_pick_greedily_never_twice_and_read_the_last_pair_without_a_query(tokenizer):
    env = ArticleCurriculum(env_config(name="article_curriculum", train_size=2, eval_size=2))
    pairs = [KVPair((10 + i,), (20 + i,), i) for i in range(4)]
    episodes = [Episode(env.train_examples()[0], pairs), Episode(env.train_examples()[1], pairs)]
    engine = ScriptedEngine()
    play_episodes(episodes, engine=engine, tokenizer=tokenizer, env=env, vectors=FixedVectors(), sampling=None,
                  temperature=1.0, greedy=True, generator=None, max_prompt_len=512)
    assert engine.calls == [2, 2, 2]  # K - 1 = 3 query steps, batched over both episodes
    for e in episodes:
        assert e.order == [2, 3, 0, 1]  # the best remaining key each time (0 and 1 tie: the first), then the last
        assert len(e.queries) == len(e.prompts) == len(e.entropy) == 3
        assert e.entropy[0] > e.entropy[1] > e.entropy[2] > 0  # fewer keys left, less to choose between
    read_first = tokenizer.decode([12, 22])
    assert read_first in tokenizer.decode(episodes[0].prompts[1]) and read_first not in tokenizer.decode(episodes[0].prompts[0])


@pytest.fixture(scope="module")
def tokenizer():
    from rltool.actors.embedded import resolve_model_path
    from rltool.actors.load import load_tokenizer

    return load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct"))


def test_hidden_vectors_are_what_the_layers_attention_reads_through_its_projections():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=32)).eval()
    vectors = HiddenVectors(model, layer=1)
    attn = model.model.layers[1].self_attn
    texts = [[3, 4, 5], [6, 7]]  # different lengths: the batch is padded
    for proj, method in ((attn.q_proj, vectors.queries), (attn.k_proj, vectors.keys)):
        seen = []
        hook = proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        expected = []
        for ids in texts:  # each text alone, unpadded: what attention's projection receives, mean-pooled
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]))
            v = proj(seen[-1][0].mean(0)).detach()
            if proj is attn.k_proj:  # GQA: kv head j serves query heads 2j, 2j+1
                v = v.view(2, -1).repeat_interleave(2, 0).flatten()
            expected.append(v)
        hook.remove()
        assert_close(method(texts, ["", ""]), torch.stack(expected), atol=1e-5, rtol=1e-5)
    assert vectors.queries(texts, ["", ""]).shape == vectors.keys(texts, ["", ""]).shape == (2, 16)
    with pytest.raises(ValueError, match="layers 0..1"):
        HiddenVectors(model, layer=2)


def test_filter_none_keeps_everything_but_still_tracks_the_baseline():
    f = TrajectoryFilter(mode="none")
    keep, _ = f.step(torch.tensor([-1.0, 0.0, 3.0]))
    assert keep.tolist() == [True, True, True] and f.stats.count == 3 and f.stats.mean == pytest.approx(2 / 3)


def tiny_policy() -> LlamaForCausalLM:
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=32))


def test_shipped_agrl_settings_make_a_good_episodes_queries_likelier_and_a_bad_ones_less():
    shipped = OmegaConf.to_container(OmegaConf.load("conf/algo/agrl.yaml")["algo"])
    shipped.pop("agrl")
    cfg = SimpleNamespace(algo=algo_config(**shipped), trainer=TrainerConfig(micro_batch_size=4),
                          rollout=RolloutConfig(max_new_tokens=4, temperature=1.0))
    # two query steps of a high-reward episode (adv +0.5) and one of a low-reward episode (adv -0.5)
    samples = [Sample([3, 4], [6, 7], [-1.0, -1.0], 0, 0.5, adv=0.5), Sample([3, 5], [8, 9], [-1.0, -1.0], 0, 0.5, adv=0.5),
               Sample([3, 4], [10, 11], [-1.0, -1.0], 1, -0.5, adv=-0.5)]
    model = tiny_policy()
    batch = collate(samples, pad_id=0)
    batch.ref_logp = update.logp_no_grad(tiny_policy(), batch, cfg)  # the frozen base: a copy of the start
    before = update.logp_no_grad(model, batch, cfg).sum(-1)
    update.optimize(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, cfg)
    after = update.logp_no_grad(model, batch, cfg).sum(-1)
    assert (after[:2] > before[:2]).all() and after[2] < before[2]
    assert cfg.algo.agg == "dr_grpo" and cfg.algo.kl_coef > 0 and cfg.algo.rollout == "agrl"


def test_hub_source_reads_articles_sentence_by_sentence_and_an_unreachable_hub_is_one_line(tmp_path):
    rows = [{"id": str(i), "title": f"T{i}", "text": f"First fact {i} here. Second fact {i}! Third {i}?"} for i in range(5)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    env = ArticleCurriculum(env_config(name="article_curriculum", source="hub", hub_name=str(tmp_path), hub_subset="",
                                      eval_size=2, train_size=3, pair_unit="tokens", key_tokens=2, value_tokens=1,
                                      pairs_per_episode=2))
    assert [e.id for e in env.eval_examples()] == ["0", "1"] and [e.id for e in env.train_examples()] == ["2", "3", "4"]
    facts = env.train_examples()[0].meta["article"].facts
    assert [f.text for f in facts] == ["First fact 2 here.", "Second fact 2!", "Third 2?"]
    assert env.unit == "tokens" and len(env.pairs(env.train_examples()[0], encode, None)) == 2
    code = ("from rltool.schemas import env_config\nfrom rltool.agrl.article_env import ArticleCurriculum\n"
            "ArticleCurriculum(env_config(name='article_curriculum', source='hub'))")
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline, timeout=120)
    assert out.returncode != 0
    assert "ConfigError: env.source=hub: could not read env.hub_name='wikimedia/wikipedia'" in out.stderr
    assert "env.source=embedded" in out.stderr


def test_learn_selection_makes_a_good_episodes_pick_likelier_through_the_policys_own_vectors():
    from rltool.agrl.selection import attention_scores
    from rltool.agrl.rollout import selection_inputs
    from rltool.agrl.rollout import AgrlConfig

    agrl = AgrlConfig(embedding="hidden", learn_selection=True, layer=0, select_temperature=0.5)
    cfg = SimpleNamespace(algo=algo_config(name="agrl", agg="dr_grpo", agrl=agrl), trainer=TrainerConfig(micro_batch_size=2),
                          rollout=RolloutConfig(max_new_tokens=4, temperature=1.0))
    pairs = [KVPair((10 + i, 11 + i), (20,), i) for i in range(3)]
    good, bad = Episode(None, pairs, order=[2, 0, 1]), Episode(None, pairs, order=[1, 2, 0])
    rows = [(good, 0, 1.0, [6, 7]), (good, 1, 1.0, [8]), (bad, 0, -1.0, [9, 5])]
    samples = [Sample([3, 4], q, [-1.0] * len(q), 0, r, adv=r, **selection_inputs(e, s)) for e, s, r, q in rows]
    batch = collate(samples, pad_id=0)
    assert batch.extra["select_keys"].shape == (3, 3, 2) and batch.extra["select_used"][1].tolist() == [False, False, True]
    plain = collate([Sample(s.prompt_ids, s.completion_ids, s.sample_logp, 0, s.reward, adv=s.adv) for s in samples], pad_id=0)

    def pick_logp(model) -> torch.Tensor:
        v = HiddenVectors(model, layer=0)
        with torch.no_grad():
            keys = v.keys([list(p.key) for p in pairs], [""] * 3)  # (3, d)
            q = v.queries([r[3] for r in rows], [""] * 3)  # (3, d)
            logits = (attention_scores(q, keys.expand(3, -1, -1)) / 0.5).masked_fill(batch.extra["select_used"], float("-inf"))
            return torch.log_softmax(logits, -1).gather(-1, batch.extra["select_index"][:, None])[:, 0]

    after, metrics = {}, {}
    for name, b in (("with", batch), ("without", plain)):  # the same start; the query-token term alone moves picks too
        model = tiny_policy()
        metrics[name] = update.optimize(model, torch.optim.SGD(model.parameters(), lr=2.0), b, cfg)
        after[name] = pick_logp(model)
    assert metrics["with"]["loss/select"] != 0 and "loss/select" not in metrics["without"]
    moved = after["with"] - after["without"]
    assert (moved[:2] > 0).all() and moved[2] < 0
    with pytest.raises(Exception, match="needs algo.agrl.embedding=hidden"):
        AgrlConfig(learn_selection=True)


def test_base_model_baseline_is_the_lora_policy_with_its_adapter_off():
    from rltool.actors.lora import AdapterDisabled, add_adapter
    from rltool.agrl.rollout import base_model
    from rltool.config import LoraConfig

    policy = add_adapter(tiny_policy(), LoraConfig(r=4, alpha=8))
    actor = SimpleNamespace(ref_model=None, model=policy)
    base = base_model(actor, None)
    assert isinstance(base, AdapterDisabled)
    pairs = [KVPair((3, 4), (5,), 0), KVPair((6, 7), (8, 9), 1)]
    scorer = OrderingScorer(PrefixTokenizer())
    assert_close(scorer(base, [pairs]), scorer(policy, [pairs]))  # a fresh adapter (B = 0) changes nothing
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    assert not torch.allclose(scorer(base, [pairs]), scorer(policy, [pairs]))
    assert_close(scorer(base, [pairs]), scorer(tiny_policy(), [pairs]))  # still the base weights
