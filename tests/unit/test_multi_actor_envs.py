"""Collaborative and parallel environments with scripted engines: who trains on what, in which group,
with which reward. The real engines run in tests/integration/test_multi_actor.py."""
import random
from types import SimpleNamespace

import torch

from rltool.algos.rollouts import GroupIds
from rltool.records import Completion, collate
from rltool.config import RewardConfig, RewardTerm
from rltool.envs import make_env
from rltool.evaluate import evaluate
from rltool.rewards.registry import reward
from rltool.rewards.score import Scorer
from rltool.engines.engine import Sampling
from rltool.update import compute_advantages
from rltool.schemas import env_config
from tests.unit.scripted_engine import Scripted


def actor(name, tok, replies, trainable=True):
    return SimpleNamespace(name=name, tokenizer=tok, engine=Scripted(tok, replies), trainable=trainable,
                           sampling=lambda n=1, max_new_tokens=None: Sampling(n=n, max_new_tokens=16))


def context(actors, group_size=2, seed=0, reward_name="gsm8k_flexible", **algo):
    algo = dict(overlong_mask=False, overlong_buffer=0, overlong_penalty=1.0) | algo
    cfg = SimpleNamespace(seed=seed, trainer=SimpleNamespace(group_size=group_size), algo=SimpleNamespace(**algo),
                          rollout=SimpleNamespace(max_prompt_len=512, max_new_tokens=16, temperature=1.0, top_p=1.0),
                          eval=SimpleNamespace(max_new_tokens=16))
    scorer = Scorer(RewardConfig(name="t", terms=[RewardTerm(reward_name)], success=reward_name), 16)
    return SimpleNamespace(cfg=cfg, actors=actors, scorer=scorer)


JUDGE_CALLS = []


@reward("test_coin_judge", batched=True)
def coin_judge(completions, question):
    """A stochastic judge: a fresh coin per completion; records how many completions each call judged."""
    JUDGE_CALLS.append(len(completions))
    return [random.random() for _ in completions]


@reward("test_unscored_on_marks")
def unscored_on_marks(completion, answer):
    """Could not score an answer holding '???'; else 1 if it ends with the gold answer."""
    return None if "???" in completion else float(completion.strip().endswith(answer))


def test_collab_trains_each_actor_on_its_own_turns_in_its_own_groups(tok):
    env = make_env(env_config(name="collab_arithmetic", eval_size=2, train_size=4, round_spec="solver -> checker"))
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
    assert len(actors["solver"].engine.calls[0][0]) == 4 and len(actors["checker"].engine.calls[0][0]) == 4  # batched turns
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
    env = make_env(env_config(name="collab_arithmetic", eval_size=2, train_size=16, round_spec="(solver|checker) -> solver"))
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
    env = make_env(env_config(name="parallel_gsm8k", eval_size=2, train_size=4, drafts=3, draft_share=0.5,
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
    assert len(drafter.engine.calls[0][0]) == 1 and drafter.engine.calls[0][1].n == 6  # one call: G x K drafts
    assert [a.reward for a in answers] == [1.0, 0.0]
    # own reward (right 1, wrong 0, unformatted -0.1) + 0.5 x the attempt's combiner reward (1 then 0)
    assert [d.reward for d in drafts] == [1.5, 0.5, 0.4, 1.0, 0.0, -0.1]
    assert [d.info["formatted"] for d in drafts] == [True, True, False] * 2
    assert len({d.group for d in drafts}) == 1 and len({a.group for a in answers}) == 1
    assert drafts[0].group != answers[0].group  # each role compared with itself
    # the combiner saw the drafts, unformatted one included
    shown = tok.decode(answers[0].prompt_ids)
    assert "Draft 3:\nno final answer here" in shown and f"Draft 1:\nso #### {gold}" in shown


def test_a_team_reward_is_scored_once_per_conversation_and_shared_by_teammates(tok):
    env = make_env(env_config(name="collab_arithmetic", eval_size=2, train_size=4, round_spec="solver -> checker"))
    actors = {"solver": actor("solver", tok, ["I think 7."]), "checker": actor("checker", tok, ["#### 7"])}
    JUDGE_CALLS.clear()
    samples = env.play(context(actors, reward_name="test_coin_judge"), env.train_examples()[:2], GroupIds(0))
    assert JUDGE_CALLS == [4]  # 2 problems x 2 conversations, judged once each (not once per trainable actor)
    # each conversation's two trajectories carry its one score; the four conversations' scores differ
    solver = [s.reward for s in samples if s.actor == "solver"]
    checker = [s.reward for s in samples if s.actor == "checker"]
    assert len(solver) == 4 and solver == checker and len(set(solver)) == 4


def test_parallel_drafts_are_scored_by_the_run_reward_not_by_a_gsm8k_parse(tok):
    env = make_env(env_config(name="parallel_gsm8k", eval_size=2, train_size=4, drafts=2, draft_share=0.5))
    example = env.train_examples()[0]
    gold = example.answer
    # right drafts in math_verify's own form (\boxed{}, no '####'), a wrong one, and a right combined answer
    drafter = actor("drafter", tok, [f"so the answer is $\\boxed{{{gold}}}$", "$\\boxed{0}$"])
    combiner = actor("combiner", tok, [f"$\\boxed{{{gold}}}$"])
    env.cfg.drafter, env.cfg.combiner = "drafter", "combiner"
    samples = env.play(context({"drafter": drafter, "combiner": combiner}, reward_name="math_verify"), [example],
                       GroupIds(0))
    drafts = [s for s in samples if s.actor == "drafter"]
    # own (math_verify: right 1, wrong 0) + 0.5 x the combiner's 1
    assert [d.reward for d in drafts] == [1.5, 0.5, 1.5, 0.5]


def test_parallel_drafts_of_an_unscored_answer_stay_unscored(tok):
    env = make_env(env_config(name="parallel_gsm8k", eval_size=2, train_size=4, drafts=2, draft_share=0.5))
    example = env.train_examples()[0]
    drafter = actor("drafter", tok, [f"#### {example.answer}"])
    combiner = actor("combiner", tok, ["???", f"#### {example.answer}"])  # attempt 1's answer cannot be scored
    env.cfg.drafter, env.cfg.combiner = "drafter", "combiner"
    samples = env.play(context({"drafter": drafter, "combiner": combiner}, reward_name="test_unscored_on_marks"),
                       [example], GroupIds(0))
    assert [s.reward for s in samples if s.actor == "combiner"] == [None, 1.0]
    # attempt 1: the team reward is unknown, so its drafts are too (never own + 0.5 x 0); attempt 2: 1 + 0.5
    assert [s.reward for s in samples if s.actor == "drafter"] == [None, None, 1.5, 1.5]


class Long(Scripted):
    """Every reply is cut at sampling.max_new_tokens (truncated), as an engine hitting the limit returns it."""

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        return [[Completion(c.token_ids[:sampling.max_new_tokens], c.logp[:sampling.max_new_tokens], c.text,
                            len(c.token_ids) > sampling.max_new_tokens) for c in group] for group in out]


def test_dapo_overlong_penalty_and_mask_apply_in_collab_and_parallel_envs(tok):
    long_reply = "#### 7 " + "and so on " * 10  # > 16 tokens: cut at 16, truncated
    algo = dict(overlong_mask=True, overlong_buffer=4, overlong_penalty=1.0)  # the last 4 of 16 tokens penalised
    env = make_env(env_config(name="collab_arithmetic", eval_size=2, train_size=4, round_spec="solver -> checker"))
    solver, checker = actor("solver", tok, ["I think 7."]), actor("checker", tok, [long_reply])
    checker.engine = Long(tok, [long_reply])
    samples = env.play(context({"solver": solver, "checker": checker}, **algo), env.train_examples()[:1], GroupIds(0))
    # the team answer (the checker's) ran to 16 tokens: penalty -1 on the shared reward; the checker's own turn was
    # cut, so its trajectories are masked; the solver's own turn was not
    assert all(s.reward == s.info["reward_parts"]["gsm8k_flexible"] - 1.0 for s in samples)
    assert [s.loss_weight for s in samples if s.actor == "checker"] == [0.0, 0.0]
    assert [s.loss_weight for s in samples if s.actor == "solver"] == [1.0, 1.0]

    env = make_env(env_config(name="parallel_gsm8k", eval_size=2, train_size=4, drafts=2, draft_share=0.0))
    env.cfg.drafter, env.cfg.combiner = "drafter", "combiner"
    drafter, combiner = actor("drafter", tok, ["#### 1"]), actor("combiner", tok, ["#### 1"])
    drafter.engine = Long(tok, [long_reply])
    samples = env.play(context({"drafter": drafter, "combiner": combiner}, **algo), env.train_examples()[:1],
                       GroupIds(0))
    drafts = [s for s in samples if s.actor == "drafter"]
    assert all(d.reward == d.info["reward_parts"]["gsm8k_flexible"] - 1.0 and d.loss_weight == 0.0 for d in drafts)
    assert all(s.reward == s.info["reward_parts"]["gsm8k_flexible"] and s.loss_weight == 1.0
               for s in samples if s.actor == "combiner")


class Oracle(Scripted):
    """Always right: answers '#### <gold>' for the problem its prompt holds."""

    def __init__(self, tok, examples):
        super().__init__(tok, [])
        self.gold = {e.question: e.answer for e in examples}

    def generate(self, prompts, sampling):
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            answer = next(a for q, a in self.gold.items() if q in text)
            ids = self.tok.encode(f"#### {answer}", add_special_tokens=False) + [self.tok.eos_token_id]
            out.append([Completion(ids, [-0.5] * len(ids), f"#### {answer}", False)])
        return out


def test_composed_eval_gives_each_part_its_own_problems(tok):
    env = make_env(env_config(name="gsm8k+collab_arithmetic", eval_size=3, train_size=4))
    examples = env.eval_examples()
    actors = {n: actor(n, tok, []) for n in ("solver", "checker")}
    for a in actors.values():
        a.engine = Oracle(tok, examples)
    cfg = SimpleNamespace(lead_actor=SimpleNamespace(name="solver"), seed=0,
                          eval=SimpleNamespace(size=2, n=1, max_new_tokens=16), rollout=SimpleNamespace(max_prompt_len=512),
                          reward=RewardConfig(name="t", terms=[RewardTerm("gsm8k_strict")], success="gsm8k_strict"))
    metrics, rows = evaluate(actors, env, cfg)
    # eval.size=2 is each part's: 2 gsm8k and 2 collab_arithmetic problems, all answered right by the oracle team
    assert sorted(r["id"].split("-")[0] for r in rows) == ["collab_arithmetic", "collab_arithmetic", "gsm8k", "gsm8k"]
    assert metrics["eval/gsm8k/accuracy_flexible"] == 1.0 and metrics["eval/collab_arithmetic/accuracy_flexible"] == 1.0
    assert metrics["eval/accuracy_flexible"] == 1.0
    assert metrics["eval/success"] == 1.0 and metrics["eval/collab_arithmetic/success"] == 1.0  # its reward too
