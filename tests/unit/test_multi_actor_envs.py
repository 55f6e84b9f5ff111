"""Collaborative and parallel environments with scripted engines: who trains on what, in which group,
with which reward. The real engines run in tests/integration/test_multi_actor.py."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from rltool.algos.rollouts import GroupIds
from rltool.batch import collate
from rltool.config import EnvConfig, RewardConfig, RewardTerm
from rltool.envs import make_env
from rltool.rewards.score import Scorer
from rltool.rollout.engine import Sampling
from rltool.samples import Completion
from rltool.steps import compute_advantages

TOKENIZER = Path.home() / ".cache" / "rltool" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tok():
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip("embedded model not materialized (python -m rltool.actors.embedded)")
    return AutoTokenizer.from_pretrained(TOKENIZER)


class Scripted:
    """Replies to each prompt in turn from `replies` (cycling); records every call's prompts and sampling."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.calls, self.k = tok, replies, [], 0

    def generate(self, prompts, sampling):
        self.calls.append((len(prompts), sampling))
        out = []
        for _ in prompts:
            group = []
            for _ in range(sampling.n):
                text = self.replies[self.k % len(self.replies)]
                self.k += 1
                ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
                group.append(Completion(ids, [-0.5] * len(ids), text, False))
            out.append(group)
        return out


def actor(name, tok, replies, trainable=True):
    return SimpleNamespace(name=name, tokenizer=tok, engine=Scripted(tok, replies), trainable=trainable,
                           sampling=lambda n=1, max_new_tokens=None: Sampling(n=n, max_new_tokens=16))


def context(actors, group_size=2, seed=0):
    cfg = SimpleNamespace(seed=seed, trainer=SimpleNamespace(group_size=group_size),
                          rollout=SimpleNamespace(max_prompt_len=512, max_new_tokens=16, temperature=1.0, top_p=1.0),
                          eval=SimpleNamespace(max_new_tokens=16))
    scorer = Scorer(RewardConfig(name="t", terms=[RewardTerm("gsm8k_flexible")], success="gsm8k_flexible"), 16)
    return SimpleNamespace(cfg=cfg, actors=actors, scorer=scorer)


def test_collab_trains_each_actor_on_its_own_turns_in_its_own_groups(tok):
    env = make_env(EnvConfig(name="collab_arithmetic", eval_size=2, train_size=4, round_spec="solver -> checker"))
    examples = env.train_examples()[:2]
    right = f"#### {examples[0].answer}"  # problem 0 is answered right by the checker in conversation 0 only
    actors = {"solver": actor("solver", tok, ["I think 7."]),
              "checker": actor("checker", tok, [right, "#### -1", "#### -1", "#### -1"]),
              "judge": actor("judge", tok, ["unused"], trainable=False)}
    ctx = context(actors)
    samples = env.play(ctx, examples, GroupIds(0))
    # 2 problems x 2 conversations x 2 trainable actors; the frozen judge never spoke and trains nothing
    assert sorted((s.actor, s.group) for s in samples) == sorted(
        [(a, g) for a in ("solver", "checker") for g in (0, 0, 1, 1)])
    assert actors["solver"].engine.calls[0][0] == 4 and actors["checker"].engine.calls[0][0] == 4  # batched turns
    assert actors["judge"].engine.calls == []
    # the answer is the last speaker's (the checker's): the team reward is shared by both actors
    assert [s.reward for s in samples if s.actor == "solver"] == [s.reward for s in samples if s.actor == "checker"]
    assert [s.reward for s in samples if s.actor == "solver"] == [1.0, 0.0, 0.0, 0.0]
    # each actor's trained tokens are exactly its own turn (the engine's ids, EOS included)
    for s in samples:
        own = [t for t, m in zip(s.completion_ids, s.completion_mask) if m]
        reply = "I think 7." if s.actor == "solver" else None
        if reply:
            assert own == tok.encode(reply, add_special_tokens=False) + [tok.eos_token_id]
        assert sum(s.completion_mask) == len(own) and all(lp == -0.5 for lp, m in zip(s.sample_logp, s.completion_mask) if m)
    # advantages within each actor's own groups: group 0 rewards (1, 0) -> (+0.7071, -0.7071) by hand
    # (GRPO: (r - mean) / std, std unbiased = 0.7071); group 1 all 0 -> 0
    cfg = SimpleNamespace(algo=SimpleNamespace(advantage="grpo", kl_placement="loss", kl_coef=0.0, kl_estimator="k3"))
    for name in ("solver", "checker"):
        mine = [s for s in samples if s.actor == name]
        batch = collate(mine, tok.pad_token_id)
        compute_advantages(mine, batch, cfg)
        assert [round(s.adv, 4) for s in mine] == [0.7071, -0.7071, 0.0, 0.0]
        assert torch.equal(batch.adv != 0, (batch.mask > 0) & torch.tensor([[True], [True], [False], [False]]))


def test_collab_schedules_are_per_group_and_an_actor_that_never_speaks_trains_nothing(tok):
    env = make_env(EnvConfig(name="collab_arithmetic", eval_size=2, train_size=16, round_spec="(solver|checker) -> solver"))
    actors = {"solver": actor("solver", tok, ["#### 1"]), "checker": actor("checker", tok, ["#### 2"])}
    samples = env.play(context(actors, group_size=3, seed=1), env.train_examples()[:8], GroupIds(0))
    by_group = {}
    for s in samples:
        by_group.setdefault(s.group, set()).add(tuple(s.info["schedule"]))
    assert all(len(v) == 1 for v in by_group.values())  # one schedule per group
    for group, (schedule,) in by_group.items():
        speakers = {s.actor for s in samples if s.group == group}
        assert speakers == set(schedule)  # the checker has samples only where it spoke
    assert {sched for v in by_group.values() for sched in v} == {("solver", "solver"), ("checker", "solver")}


def test_parallel_drafts_get_their_own_reward_plus_a_share_and_unformatted_drafts_are_kept(tok):
    env = make_env(EnvConfig(name="parallel_gsm8k", eval_size=2, train_size=4, drafts=3, draft_share=0.5,
                             draft_format_reward=-0.1))
    example = env.train_examples()[0]
    gold = example.answer
    drafter = actor("drafter", tok, [f"so #### {gold}", "#### 0", "no final answer here"])
    combiner = actor("combiner", tok, [f"#### {gold}", "#### 0"])
    ctx = context({"drafter": drafter, "combiner": combiner}, group_size=2)
    env.cfg.drafter, env.cfg.combiner = "drafter", "combiner"
    samples = env.play(ctx, [example], GroupIds(0))
    drafts = [s for s in samples if s.actor == "drafter"]
    answers = [s for s in samples if s.actor == "combiner"]
    assert len(drafts) == 6 and len(answers) == 2  # G=2 attempts x K=3 drafts; nothing dropped
    assert drafter.engine.calls[0][0] == 1 and drafter.engine.calls[0][1].n == 6  # one call: G x K drafts
    assert [a.reward for a in answers] == [1.0, 0.0]
    # own reward (right 1, wrong 0, unformatted -0.1) + 0.5 x the attempt's combiner reward (1 then 0)
    assert [d.reward for d in drafts] == [1.5, 0.5, 0.4, 1.0, 0.0, -0.1]
    assert [d.info["formatted"] for d in drafts] == [True, True, False] * 2
    assert len({d.group for d in drafts}) == 1 and len({a.group for a in answers}) == 1
    assert drafts[0].group != answers[0].group  # each role compared with itself
    # the combiner saw the drafts, unformatted one included
    shown = tok.decode(answers[0].prompt_ids)
    assert "Draft 3:\nno final answer here" in shown and f"Draft 1:\nso #### {gold}" in shown
