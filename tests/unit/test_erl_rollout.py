"""The ERL rollout with a real env, scorer and tokenizer; only the engine is scripted.

ScriptedEngine answers by reading the decoded prompt, like a policy would: a first attempt is right
("C") or wrong ("W") per the test's pattern; a reflection prompt gets a "GOOD" plan for questions in
`good` and a "BAD" one otherwise; a retry prompt is answered right iff it contains a GOOD plan.
So r2 can only be 1 if the plan Δ reached the retry prompt.
"""
import pickle
from collections import defaultdict
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rltool.algos.erl import ERLRollout, ErlConfig, fill
from rltool.algos.rollouts import ROLLOUTS, RolloutContext
from rltool.config import (ActorConfig, Config, HardwareConfig, RewardConfig,
                           RewardTerm, RolloutConfig, TrainerConfig)
from rltool.envs.arithmetic import ArithmeticEnv
from rltool.envs.base import Example
from rltool.rewards import Scorer
from rltool.records import Completion
from rltool.schemas import algo_config, env_config

TOKENIZER = Path.home() / ".cache" / "rltool" / "models" / "smollm2-135m-instruct"
REFLECT_MARK = "A previous attempt at a task failed."
RETRY_MARK = "Use this plan:"
G = 4


class ScriptedEngine:
    def __init__(self, tok, examples, attempts: dict[str, str], good=(), plan="plan: add the digits"):
        self.tok, self.examples, self.attempts, self.good, self.plan = tok, examples, attempts, set(good), plan
        self.seen = defaultdict(int)
        self.calls = []  # (decoded prompts, sampling) per generate call

    def generate(self, prompts, sampling):
        texts = [self.tok.decode(p) for p in prompts]
        self.calls.append((texts, sampling))
        return [[self.complete(self.respond(t)) for _ in range(sampling.n)] for t in texts]

    def respond(self, text):
        ex = next(e for e in self.examples if e.question in text)
        right, wrong = f"#### {ex.answer}", f"#### {int(ex.answer or 0) + 1}"
        if REFLECT_MARK in text:
            return f"{'GOOD' if ex.question in self.good else 'BAD'} {self.plan} for {ex.question}"
        if RETRY_MARK in text:
            return right if "GOOD" in text.split(RETRY_MARK)[1] else wrong
        pattern = self.attempts[ex.question]
        self.seen[ex.question] += 1
        return right if pattern[(self.seen[ex.question] - 1) % len(pattern)] == "C" else "{wrong} " + wrong

    def complete(self, text):
        ids = self.tok.encode(text, add_special_tokens=False)
        return Completion(token_ids=ids, logp=[-0.5] * len(ids), text=text, truncated=False)

    def prompts_of(self, call):
        return self.calls[call][0]


def setup(tok, patterns, good=(), reward="gsm8k_strict", examples=None, system_prompt="", max_prompt_len=512, **erl):
    """patterns: one C/W string per prompt. Returns (rollout, engine, examples)."""
    env_cfg = env_config(name="arithmetic", eval_size=2, train_size=40, digits=1, operators=["+"],
                        system_prompt=system_prompt)
    env = ArithmeticEnv(env_cfg)
    if examples is None:
        distinct = list({e.question: e for e in env.train_examples()}.values())
        examples = distinct[:len(patterns)]
    cfg = Config(algo=algo_config(name="erl", rollout="erl", erl=ErlConfig(**erl)), env=env_cfg,
                 actors={"policy": ActorConfig(name="policy", path="unused")}, hardware=HardwareConfig(name="cpu"),
                 reward=RewardConfig(name="t", terms=[RewardTerm(name=reward)], success=reward),
                 rollout=RolloutConfig(max_new_tokens=64, max_prompt_len=max_prompt_len),
                 trainer=TrainerConfig(prompts_per_step=len(examples), group_size=G, micro_batch_size=G))
    engine = ScriptedEngine(tok, examples, dict(zip([e.question for e in examples], patterns)), good)
    ctx = RolloutContext(cfg=cfg, engine=engine, tokenizer=tok, env=env,
                         scorer=Scorer(cfg.reward, cfg.rollout.max_new_tokens), draw=lambda k: examples[:k])
    return ROLLOUTS["erl"](ctx), engine, examples


def of(samples, kind):
    return [s for s in samples if s.kind == kind]


def test_registered_and_gates_exactly_the_failing_attempts(tok):
    rollout, engine, ex = setup(tok, ["CWCW", "WWWW", "CCCC"])
    assert isinstance(rollout, ERLRollout)
    samples, m = rollout(0)
    attempts = of(samples, "attempt")
    failing = [(s.example_id, s.text) for s in attempts if s.reward == 0.0]
    assert len(attempts) == 12 and len(failing) == 6
    # one reflection per failing attempt, in order, and each reflection prompt quotes that attempt
    assert [s.example_id for s in of(samples, "reflection")] == [i for i, _ in failing]
    for prompt, (_, y1) in zip(engine.prompts_of(1), failing):
        assert y1 in prompt
    assert m["erl/gated_frac"] == 0.5 and m["erl/r1"] == 0.5
    assert ex[2].id not in {s.example_id for s in of(samples, "reflection")}


def test_one_generate_call_for_all_reflections_and_one_for_all_retries(tok):
    rollout, engine, _ = setup(tok, ["CWCW", "WWWW"], reflection_max_new_tokens=17)
    rollout(0)
    assert len(engine.calls) == 3
    (_, s1), (refl, s2), (retry, s3) = engine.calls
    assert (s1.n, s2.n, s3.n) == (G, 1, 1)
    assert (len(refl), len(retry)) == (6, 6)
    assert (s2.max_new_tokens, s3.max_new_tokens) == (17, 64)
    assert all(REFLECT_MARK in p for p in refl) and all(RETRY_MARK in p for p in retry)


def test_no_gated_attempts_means_no_extra_generation(tok):
    rollout, engine, _ = setup(tok, ["CCCC"])
    samples, m = rollout(0)
    assert len(engine.calls) == 1 and len(samples) == G
    assert m["erl/gated_frac"] == 0.0 and m["erl/r2"] == 0.0 and m["erl/lift"] == 0.0


def test_reflection_prompt_has_attempt_feedback_reward_and_memory(tok):
    rollout, engine, ex = setup(tok, ["WCCC"], system_prompt="Be terse.")
    engine.good = {ex[0].question}
    rollout(0)
    (prompt,) = engine.prompts_of(1)
    wrong = int(ex[0].answer) + 1
    assert ex[0].question in prompt and "Put the final answer after '####'." in prompt  # the user text as seen
    assert f"Attempt:\n{{wrong}} #### {wrong}" in prompt
    assert f"Feedback: final answer {wrong} is wrong" in prompt
    assert "Reward: 0.00" in prompt
    assert "Lessons that helped before:\n(none)" in prompt  # step 0: memory is empty
    assert "Be terse." in prompt and "SmolLM" not in prompt  # env's system message kept, template default not added
    engine.seen.clear()
    rollout(1)
    (prompt,) = engine.prompts_of(4)
    assert f"Lessons that helped before:\n- GOOD plan: add the digits for {ex[0].question}\n" in prompt


def test_retry_prompt_has_reflection_but_not_attempt_or_feedback(tok):
    rollout, engine, ex = setup(tok, ["WCCC"], good=())
    samples, _ = rollout(0)
    (retry_prompt,) = engine.prompts_of(2)
    (reflection,) = of(samples, "reflection")
    assert reflection.text in retry_prompt and ex[0].question in retry_prompt
    assert "{wrong}" not in retry_prompt and "is wrong" not in retry_prompt and "Reward" not in retry_prompt


def test_retry_scored_against_original_example_and_shared_with_reflection(tok):
    rollout, engine, ex = setup(tok, ["WWCC", "WCCC"], good=())
    engine.good = {ex[0].question}
    samples, m = rollout(0)
    assert [(s.example_id, s.reward) for s in of(samples, "retry")] == [(ex[0].id, 1.0)] * 2 + [(ex[1].id, 0.0)]
    assert [s.reward for s in of(samples, "reflection")] == [1.0, 1.0, 0.0]
    assert [s.success for s in of(samples, "retry")] == [1.0, 1.0, 0.0]
    assert m["erl/r2"] == pytest.approx(2 / 3) and m["erl/lift"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("threshold, stored", [(0.5, 2), (0.99, 2), (1.0, 0)])
def test_memory_stores_iff_r2_above_threshold(tok, threshold, stored):
    rollout, engine, ex = setup(tok, ["WWCC", "WCCC"], memory_threshold=threshold)
    engine.good = {ex[0].question}  # r2 = 1 for ex0's two retries, 0 for ex1's
    _, m = rollout(3)
    assert len(rollout.memory) == stored and m["erl/memory_size"] == stored
    assert all(e.prompt.startswith(ex[0].question) and e.step == 3 for e in rollout.memory.entries)


@pytest.mark.parametrize("erl", [{"memory_size": 0}, {"enable_memory": False}])
def test_memory_off(tok, erl):
    rollout, engine, ex = setup(tok, ["WCCC"], **erl)
    engine.good = {ex[0].question}
    rollout(0)
    rollout(1)
    assert len(rollout.memory) == 0
    assert "Lessons that helped before:\n(none)" in engine.prompts_of(4)[0]


@pytest.mark.parametrize("retrieval, lesson_about", [("recency", 1), ("similarity", 0)])
def test_recency_vs_similarity_retrieval(tok, retrieval, lesson_about):
    rollout, engine, ex = setup(tok, ["WCCC", "WCCC"], retrieval=retrieval, memory_top_k=1)
    engine.good = {ex[0].question, ex[1].question}
    rollout(0)  # stores a lesson about ex0, then one about ex1 (the newest)
    assert len(rollout.memory) == 2
    rollout.ctx.draw = lambda k: ex[:1]
    engine.seen.clear()
    rollout(1)
    (prompt,) = engine.prompts_of(4)
    assert f"- GOOD plan: add the digits for {ex[lesson_about].question}" in prompt
    assert f"for {ex[1 - lesson_about].question}" not in prompt.split("Lessons that helped before:")[1]


def test_sft_internalization_uses_original_prompt_and_only_good_retries(tok):
    rollout, engine, ex = setup(tok, ["WWCC", "WCCC"], internalization_coef=0.3)
    engine.good = {ex[0].question}
    samples, m = rollout(0)
    distill = of(samples, "distill")
    good_retries = [s for s in of(samples, "retry") if s.reward == 1.0]
    assert len(distill) == 2 == m["erl/distill_pairs"]
    original = [s.prompt_ids for s in of(samples, "attempt") if s.example_id == ex[0].id][0]
    for d, r in zip(distill, good_retries):
        assert d.prompt_ids == original != r.prompt_ids
        assert d.completion_ids == r.completion_ids and d.reward == 1.0
        assert (d.loss_weight, d.sft_weight, d.adv) == (0.0, 0.3, 0.0)
    assert len({d.group for d in distill}) == 1
    assert {d.group for d in distill}.isdisjoint(s.group for s in samples if s.kind != "distill")


def test_raft_internalization_is_reward_weighted_likelihood(tok):
    rollout, engine, ex = setup(tok, ["WCCC"], internalization="raft", internalization_coef=0.5)
    engine.good = {ex[0].question}
    samples, _ = rollout(0)
    (d,) = of(samples, "distill")
    assert (d.loss_weight, d.sft_weight, d.adv, d.reward) == (0.5, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("erl", [{"distill_threshold": 1.0}, {"enable_internalization": False}])
def test_no_distill_pairs(tok, erl):
    rollout, engine, ex = setup(tok, ["WCCC"], **erl)
    engine.good = {ex[0].question}
    samples, m = rollout(0)
    assert of(samples, "distill") == [] and m["erl/distill_pairs"] == 0.0


def test_packed_groups_and_updates(tok):
    rollout, engine, ex = setup(tok, ["WWCC", "WCCC"])
    engine.good = {ex[0].question}
    samples, m = rollout(0)
    attempt_groups = {s.group for s in of(samples, "attempt")}
    refl_groups = {s.group for s in of(samples, "reflection")}
    retry_groups = {s.group for s in of(samples, "retry")}
    assert len(attempt_groups) == 2 and len(refl_groups) == 1 and len(retry_groups) == 1
    assert len(attempt_groups | refl_groups | retry_groups) == 4
    assert {s.update for s in samples} == {0}
    assert m["rollout/groups"] == 5.0  # 2 attempt groups, 1 reflection, 1 retry, 1 distill


def test_split_groups_per_prompt_in_a_second_update(tok):
    rollout, engine, ex = setup(tok, ["WWCC", "WCCC"], variant="split")
    engine.good = {ex[0].question}
    samples, _ = rollout(0)
    for kind in ("reflection", "retry"):
        by_prompt = defaultdict(set)
        for s in of(samples, kind):
            by_prompt[s.example_id].add(s.group)
        assert {k: len(v) for k, v in by_prompt.items()} == {ex[0].id: 1, ex[1].id: 1}
        assert by_prompt[ex[0].id] != by_prompt[ex[1].id]
    groups = [{s.group for s in of(samples, k)} for k in ("attempt", "reflection", "retry", "distill")]
    assert sum(map(len, groups)) == len(set().union(*groups)) == 2 + 2 + 2 + 1  # no id shared across kinds
    assert {(s.kind, s.update) for s in samples} == {("attempt", 0), ("reflection", 1), ("retry", 1), ("distill", 1)}


def test_loss_weights_per_kind(tok):
    rollout, engine, ex = setup(tok, ["WCCC"], attempt_weight=0.5, reflection_weight=0.25, retry_weight=2.0)
    samples, _ = rollout(0)
    assert {(s.kind, s.loss_weight, s.sft_weight, s.adv) for s in samples if s.kind != "distill"} == {
        ("attempt", 0.5, 0.0, None), ("reflection", 0.25, 0.0, None), ("retry", 2.0, 0.0, None)}


def test_reflection_disabled_is_budget_matched_grpo(tok):
    rollout, engine, ex = setup(tok, ["CWCW", "CCCC"], enable_reflection=False)
    samples, m = rollout(0)
    assert {s.kind for s in samples} == {"attempt"}
    assert len(samples) == 2 * G + 2 * 2  # two extra attempts per gated attempt
    (_, first), (extra_prompts, extra) = engine.calls
    assert (first.n, extra.n, len(extra_prompts)) == (G, 1, 4)
    groups = defaultdict(list)
    for s in samples:
        groups[s.group].append(s.example_id)
    assert sorted(map(len, groups.values())) == [G, G + 4]
    assert all(len(set(v)) == 1 for v in groups.values())
    assert len(rollout.memory) == 0 and m["erl/gated_frac"] == 0.25 and m["erl/r2"] == 0.0
    assert m["erl/tokens_attempt"] == sum(len(s.completion_ids) for s in samples)


def test_unscorable_attempts_are_not_gated(tok):
    examples = [Example("nogold", "What is 2 + 2?", ""), Example("ok", "What is 3 + 3?", "6")]
    rollout, engine, _ = setup(tok, ["WWWW", "WCCC"], reward="math_verify", examples=examples)
    samples, m = rollout(0)
    assert all(s.reward is None for s in samples if s.example_id == "nogold")
    assert [s.example_id for s in of(samples, "reflection")] == ["ok"]
    assert m["erl/gated_frac"] == 1 / 8 and m["erl/r1"] == 3 / 4  # r1 averages the 4 scorable attempts


def test_braces_in_model_text_and_questions_are_literal(tok):
    q = "What is {2} + 3? {prompt} {attempt"
    rollout, engine, _ = setup(tok, ["WCCC"], examples=[Example("b", q, "5")])
    engine.plan = "use {attempt} and {reflection} }{ {0}"
    engine.good = {q}
    samples, _ = rollout(0)
    refl_prompt, retry_prompt = engine.prompts_of(1)[0], engine.prompts_of(2)[0]
    assert q in refl_prompt and "{wrong} #### 6" in refl_prompt
    assert f"GOOD use {{attempt}} and {{reflection}} }}{{ {{0}} for {q}" in retry_prompt
    assert of(samples, "retry")[0].reward == 1.0
    assert fill("{a}{b}{c}", a="{b}", b="x") == "{b}x{c}"  # one pass: values are never re-substituted


def test_metrics_are_floats_with_stable_keys(tok):
    rollout, engine, ex = setup(tok, ["WWCC"])
    engine.good = {ex[0].question}
    samples, m = rollout(0)
    assert set(m) == {"erl/gated_frac", "erl/r1", "erl/r2", "erl/lift", "erl/memory_size", "erl/distill_pairs",
                      "erl/prompt_truncated",
                      "erl/tokens_attempt", "erl/tokens_reflection", "erl/tokens_retry", "rollout/groups"}
    assert all(type(v) is float for v in m.values())
    assert m["erl/tokens_reflection"] == sum(len(s.completion_ids) for s in of(samples, "reflection")) > 0


def test_state_dict_round_trip_restores_memory(tok):
    rollout, engine, ex = setup(tok, ["WCCC"])
    engine.good = {ex[0].question}
    rollout(0)
    state = pickle.loads(pickle.dumps(rollout.state_dict()))
    fresh, engine2, _ = setup(tok, ["WCCC"], examples=ex)
    fresh.load_state_dict(state)
    assert len(fresh.memory) == 1
    fresh(1)
    assert f"- GOOD plan: add the digits for {ex[0].question}" in engine2.prompts_of(1)[0]


LONG_ATTEMPT = "step " * 150 + "so the total is THE-END"  # ~300 tokens, its end a marker


def test_reflection_prompt_fits_the_budget_keeping_task_and_the_end_of_the_attempt(tok):
    # The reflection prompt is ~120 tokens of chat header, task and template, + 82 of memory + a 157-token
    # attempt = ~360: a budget of 260 leaves ~55 tokens for the attempt.
    rollout, engine, ex = setup(tok, ["W"], max_prompt_len=260)
    original = engine.respond
    engine.respond = lambda text: (LONG_ATTEMPT if REFLECT_MARK not in text and RETRY_MARK not in text
                                   else original(text))
    rollout.memory.add(ex[0].question, "lesson one " * 40, step=-1)  # ~80 tokens of memory
    samples, m = rollout(0)
    reflections = of(samples, "reflection")
    assert len(reflections) == G and m["erl/prompt_truncated"] >= G
    for r in reflections:
        assert len(r.prompt_ids) <= 260
        text = tok.decode(r.prompt_ids)
        assert text.startswith("<|im_start|>") and ex[0].question in text  # header and task kept
        assert "THE-END" in text  # the end of the attempt kept, its start cut
        assert 0 < text.count("step") < 150 and "lesson one" in text  # memory kept while the attempt had room


def test_memory_is_dropped_after_the_attempt_is_gone(tok):
    # ~125 tokens of header, task and template + 3 lessons of ~123 = ~495 > 400 even with the attempt omitted:
    # the least relevant lesson (recency: the oldest, "lesson 0") goes; the task stays.
    rollout, engine, ex = setup(tok, ["W"], max_prompt_len=400)
    for i in range(3):
        rollout.memory.add(ex[0].question, f"lesson {i} " * 40, step=-1)
    samples, m = rollout(0)
    reflections = of(samples, "reflection")
    assert reflections and all(len(r.prompt_ids) <= 400 for r in reflections)
    text = tok.decode(reflections[0].prompt_ids)
    assert ex[0].question in text and "lesson 2" in text and "lesson 1" in text and "lesson 0" not in text
    assert m["erl/prompt_truncated"] >= 1


def test_prompts_are_never_cut_from_the_left(tok):
    from rltool.engines.prompts import PromptTooLong, encode_chat, fitting_examples

    with pytest.raises(PromptTooLong, match="max_prompt_len=5"):
        encode_chat(tok, [{"role": "user", "content": "What is 2 + 2?"}], 5)
    env = ArithmeticEnv(env_config(name="arithmetic", eval_size=2, train_size=10))
    full = len(encode_chat(tok, env.messages(env.train_examples()[0])))
    kept, skipped = fitting_examples(env.train_examples(), env.messages, tok, full - 1)
    assert skipped == 10 - len(kept) and skipped > 0
    assert all(len(encode_chat(tok, env.messages(e))) <= full - 1 for e in kept)


# ---- two ranks (gloo on loopback): one memory, and groups that span the ranks ----
PATTERNS = ["WCCC", "WWCC", "CCCW", "WWWW"]  # prompts 0, 1 on rank 0; 2, 3 on rank 1
GOOD = (0, 2, 3)  # reflections on these prompts' attempts lead to a right retry


def erl_steps(tok, patterns, examples, good, rank=0):
    """Two ERL steps; per step the samples' (kind, example, text) -> advantage and the memory after it."""
    from rltool.records import collate
    from rltool.update import compute_advantages

    rollout, engine, _ = setup(tok, patterns, good=good, examples=examples)
    rollout.ctx.rank = rank  # group ids unique per rank, as the loop's RolloutContext has them
    steps = []
    for step in range(2):
        samples, _ = rollout(step)
        compute_advantages(samples, collate(samples, pad_id=0), rollout.ctx.cfg)
        steps.append({"adv": [((s.kind, s.example_id, s.text), s.adv) for s in samples],
                      "memory": rollout.memory.state_dict()})
    return rollout, steps


def erl_rank_worker(rank: int, port: int, out) -> None:
    import torch.distributed as tdist

    from rltool import dist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tok = AutoTokenizer.from_pretrained(TOKENIZER)
        examples = distinct_examples()
        mine = examples[2 * rank:2 * rank + 2]
        rollout, steps = erl_steps(tok, PATTERNS[2 * rank:2 * rank + 2], mine,
                                   [examples[i].question for i in GOOD], rank=rank)
        saved = dist.broadcast(pickle.dumps(rollout.state_dict()))  # what rank 0 writes into a checkpoint
        resumed, _, _ = setup(tok, PATTERNS[2 * rank:2 * rank + 2], examples=mine)
        resumed.load_state_dict(pickle.loads(saved))
        out[rank] = {"steps": steps, "resumed_memory": resumed.memory.state_dict()}
    finally:
        tdist.destroy_process_group()


def distinct_examples():
    env = ArithmeticEnv(env_config(name="arithmetic", eval_size=2, train_size=40, digits=1, operators=["+"]))
    return list({e.question: e for e in env.train_examples()}.values())[:4]


def test_two_ranks_share_one_memory_and_packed_groups_span_the_ranks(tok):
    import socket

    import torch.multiprocessing as mp

    examples = distinct_examples()
    _, one = erl_steps(tok, PATTERNS, examples, [examples[i].question for i in GOOD])  # one process, all 4 prompts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(erl_rank_worker, args=(port, out), nprocs=2, join=True)
    r0, r1 = out[0], out[1]
    for step in range(2):
        assert r0["steps"][step]["memory"] == r1["steps"][step]["memory"] == one[step]["memory"]
        # every sample's advantage equals the one-process run's (reflection and retry groups normalised over both ranks)
        two = r0["steps"][step]["adv"] + r1["steps"][step]["adv"]
        assert sorted(two) == sorted(one[step]["adv"])
    assert len(one[1]["memory"]["entries"]) >= 3  # lessons from both ranks' prompts
    assert {a for (kind, _, _), a in one[0]["adv"] if kind == "reflection"} != {0.0}  # the check has teeth
    assert r0["resumed_memory"] == r1["resumed_memory"] == one[1]["memory"]


def test_each_reward_is_logged_over_the_first_attempts(tok):
    # prompt 0 right on 2 of 4 attempts ("WWCC"); reflections/retries (right after a GOOD plan) must not count
    from rltool.update import rollout_metrics

    rollout, engine, ex = setup(tok, ["WWCC"])
    engine.good = {ex[0].question}
    samples, _ = rollout(0)
    m = rollout_metrics(samples)
    assert m["reward/gsm8k_strict"] == 0.5 == m["reward/success"]
    assert any(s.reward == 1.0 for s in samples if not s.first_attempt)  # retries scored 1, left out above
