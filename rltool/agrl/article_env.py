"""Articles cut into (key, value) pairs, for attention-guided curriculum RL (algo=agrl).

An example is one article; `pairs` cuts it into the pairs an episode chooses between, and
`messages` is the prompt under which the policy writes its next query. Sources:
  embedded: generated family-tree articles (rltool/agrl/articles.py), train and held-out drawn from
            disjoint halves of the name pool, so no person, text or id is shared;
  hub:      `env.hub_name` (default wikimedia/wikipedia, `env.hub_subset`), streamed; the first
            eval_size articles are held out, the next train_size are trained on.
Held-out evaluation (learned ordering vs random vs article order) is `evaluate`, in
rltool/agrl/evaluation.py.
"""
from __future__ import annotations

import random
import re

from rltool.agrl.articles import Article, Fact, check_disjoint, fact_pairs, heldout_articles, tokenize_article, train_articles
from rltool.agrl.kv import KVPair, KVParams, choose_pairs, episode_pairs
from dataclasses import dataclass

from rltool.config import ConfigError, HubSourceConfig, check, check_choice
from rltool.envs import register_env
from rltool.envs.base import Env, Example

INSTRUCTION = ("You are reading the article \"{title}\" one fact at a time, in the order you choose. Write a short "
               "search query (a few words) for the fact you want to read next.")
DEFAULT_TRAIN_ARTICLES = 2000


@dataclass
class ArticleConfig(HubSourceConfig):
    """env=article_curriculum's own keys: where articles come from and how they are cut into key/value pairs."""

    hub_name: str = "wikimedia/wikipedia"
    """source=hub: the dataset of articles (`text`, `title`, `id` columns)."""
    hub_subset: str = "20231101.en"
    """source=hub: the dataset's configuration ("" for none, e.g. a local folder)."""
    pair_unit: str = "auto"
    """fact (one pair per sentence: key = all but its last word, value = the last word) | tokens (key_tokens +
    value_tokens every stride tokens) | auto (fact for generated articles, tokens for hub)."""
    key_tokens: int = 8
    value_tokens: int = 4
    stride: int = 0
    """pair_unit=tokens: tokens between pair starts (0 = key_tokens + value_tokens)."""
    pairs_per_episode: int = 6
    """Pairs offered per episode (the episode's selection steps)."""
    min_article_tokens: int = 0
    """pair_unit=tokens: shorter articles are skipped."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("env.pair_unit", self.pair_unit, ["auto", "fact", "tokens"])
        for key in ("key_tokens", "value_tokens", "pairs_per_episode"):
            check(getattr(self, key) >= 1, f"env.{key}", getattr(self, key), "must be >= 1")
        for key in ("stride", "min_article_tokens"):
            check(getattr(self, key) >= 0, f"env.{key}", getattr(self, key), "must be >= 0")


@register_env("article_curriculum", config=ArticleConfig)
class ArticleCurriculum(Env):
    name = "article_curriculum"
    episodes = "article"
    """Played by algo=agrl's rollout alone: the policy writes queries that pick what it reads next."""

    def __init__(self, cfg: ArticleConfig):
        self.cfg = cfg
        train_n = cfg.train_size or DEFAULT_TRAIN_ARTICLES
        if cfg.source == "hub":
            heldout, train = hub_articles(cfg.hub_name, cfg.hub_subset, cfg.eval_size, train_n)
        else:
            train, heldout = train_articles(train_n, cfg.seed), heldout_articles(cfg.eval_size, cfg.seed)
        check_disjoint(train, heldout)
        self.unit = cfg.pair_unit if cfg.pair_unit != "auto" else ("tokens" if cfg.source == "hub" else "fact")
        self.train, self.heldout = train, heldout
        self.kv = KVParams(cfg.key_tokens, cfg.value_tokens, cfg.stride or None, cfg.pairs_per_episode,
                           cfg.min_article_tokens)

    def train_examples(self) -> list[Example]:
        return [as_example(a) for a in self.train]

    def eval_examples(self) -> list[Example]:
        return [as_example(a) for a in self.heldout]

    def messages(self, example: Example, read: list[str] = ()) -> list[dict]:
        """The query prompt after reading `read` (the pairs' texts, in the order picked)."""
        so_far = "\n".join(read) if read else "(nothing yet)"
        return [{"role": "system", "content": INSTRUCTION.format(title=example.question)},
                {"role": "user", "content": f"Read so far:\n{so_far}\n\nYour query for the next fact:"}]

    def pairs(self, example: Example, encode, rng: random.Random | None) -> list[KVPair] | None:
        """The episode's pairs_per_episode pairs of this article (in article order), or None if it is too
        short. `encode(text) -> ids` is the policy tokenizer's, without special tokens."""
        article: Article = example.meta["article"]
        if self.unit == "fact":
            return choose_pairs(fact_pairs(article, encode), self.kv.pairs_per_episode, rng)
        ids, labels = tokenize_article(article, encode)
        return episode_pairs(ids, self.kv, labels, rng)

    def is_root(self, example: Example, pair: KVPair) -> bool:
        """Every fact the pair touches is a root fact (generated articles; hub sentences count as roots)."""
        article: Article = example.meta["article"]
        return bool(pair.labels) and all(article.facts[f].root for f in pair.labels)

    def evaluate(self, actors: dict, cfg) -> tuple[dict[str, float], list[dict]]:
        from rltool.agrl.evaluation import evaluate_orderings  # loads models: not at env-build time

        return evaluate_orderings(actors, self, cfg)


def as_example(article: Article) -> Example:
    return Example(article.id, article.title, "", {"article": article})


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def hub_articles(name: str, subset: str, heldout_n: int, train_n: int) -> tuple[list[Article], list[Article]]:
    """(held-out, train) articles from a hub dataset (or a local folder of json/parquet files) with `id`,
    `title` and `text` columns, one fact per sentence; streamed, so only heldout_n + train_n are read."""
    try:
        from datasets import load_dataset

        rows = load_dataset(name, subset or None, split="train", streaming=True).take(heldout_n + train_n)
        articles = [Article(str(r["id"]), r["title"], tuple(Fact(s, ()) for s in SENTENCE_END.split(r["text"].strip()) if s),
                            ()) for r in rows]
    except Exception as e:  # no network, no such dataset or subset: one line, before any model loads
        raise ConfigError(f"env.source=hub: could not read env.hub_name={name!r} env.hub_subset={subset!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it needs network "
                          "access to the Hugging Face hub, or use env.source=embedded") from None
    return articles[:heldout_n], articles[heldout_n:]
