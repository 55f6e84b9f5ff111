"""ERL through the real loop: real vLLM on the embedded SmolLM2-135M, real optimizer steps.

Each run is `erl_driver.py` in a subprocess, which calls `rltool.train.train` with pass-through
recording (see its docstring). The reward is `controlled_reward`: a function of the completion's
character count that the model hits at random, so we know every r1 and r2 without trusting the
code under test, and every step has gated and non-gated attempts, failed and successful retries.

Three engine starts in all, each shared by several tests:
  packed:  2 steps, recency retrieval, eval and a checkpoint after every step;
  resumed: a copy of packed's step-2 checkpoint continued to step 3;
  split:   3 steps, split variant, similarity retrieval, linear LR schedule.
The whole module took 27 minutes on 2 CPU cores shared with other jobs (each run 5-15 minutes).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.erl_driver import FEEDBACK_MARK, controlled_reward

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("erl_driver.py")
LR = 5e-5
GATE, MEMORY, DISTILL = 1.0, 0.5, 0.25  # gate and memory thresholds are erl.yaml's defaults
COMMON = [
    "algo=erl", "env=arithmetic", "env.train_size=64", "env.eval_size=4", "hardware=cpu",
    "trainer.micro_batch_size=4", f"trainer.lr={LR}",
    "rollout.max_new_tokens=24", "eval.size=4", "eval.max_new_tokens=16",
    "reward.terms=[{name:test_controlled}]", "reward.success=test_controlled",
    "algo.erl.reflection_max_new_tokens=24", f"algo.erl.distill_threshold={DISTILL}",
    "rollout.enforce_eager=true",  # vLLM starts in seconds instead of ~90 s of torch.compile
    "trainer.lr_schedule=constant", "trainer.eval_every=25",  # not env=arithmetic's tuned cosine run
]
PACKED = COMMON + ["trainer.prompts_per_step=2", "trainer.group_size=4", "trainer.max_steps=2", "trainer.save_every=1",
                   "trainer.eval_every=1", "algo.erl.memory_top_k=2"]
# 4 questions a step and 3 steps, so memory holds lessons about several questions when it is
# queried, and the most similar lesson is often not the newest one.
SPLIT = COMMON + ["trainer.prompts_per_step=4", "trainer.group_size=2", "trainer.max_steps=3", "trainer.save_every=0",
                  "trainer.lr_schedule=linear", "eval.enabled=false",
                  "algo.erl.variant=split", "algo.erl.retrieval=similarity", "algo.erl.memory_top_k=1"]
ERL_KEYS = ("erl/gated_frac", "erl/r1", "erl/r2", "erl/lift", "erl/memory_size", "erl/distill_pairs",
            "erl/tokens_attempt", "erl/tokens_reflection", "erl/tokens_retry")
REFLECTION_END = "\n\nWrite a short plan that fixes the mistake. Do not solve the task."


@dataclass
class Run:
    dir: Path
    record: dict
    stdout: str
    top_k: int
    retrieval: str

    @property
    def steps(self) -> list[dict]:
        return self.record["steps"]

    def metrics(self) -> dict[int, dict]:
        from rltool.metrics import read_metrics

        return {row["step"]: row for row in read_metrics(self.dir / "metrics.jsonl")}


def drive(record: Path, overrides: list[str], top_k: int, retrieval: str) -> Run:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(DRIVER), str(record), *overrides], capture_output=True, text=True,
                          timeout=3600, env=env, cwd=DRIVER.parents[2])
    if proc.returncode != 0:
        raise AssertionError(f"erl_driver exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    run_dir = next(Path(o.split("=", 1)[1]) for o in overrides if o.startswith(("output_dir=", "resume=")))
    return Run(run_dir, json.loads(record.read_text()), proc.stdout, top_k, retrieval)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Run:
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("packed")
    return drive(tmp / "record.json", PACKED + [f"output_dir={tmp / 'run'}"], top_k=2, retrieval="recency")


@pytest.fixture(scope="module")
def resumed(packed, tmp_path_factory) -> Run:
    """packed's step-2 checkpoint, hard-linked into a fresh run dir (the resumed run never writes
    into existing checkpoint files), continued to step 3; packed's own dir stays untouched."""
    tmp = tmp_path_factory.mktemp("resumed")
    ckpts = tmp / "run" / "checkpoints"
    shutil.copytree(packed.dir / "checkpoints" / "step_000002", ckpts / "step_000002", copy_function=os.link)
    (ckpts / "latest").write_text("step_000002\n")
    overrides = [o.replace("trainer.max_steps=2", "trainer.max_steps=3") for o in PACKED]
    overrides += [f"resume={tmp / 'run'}", f"output_dir={tmp / 'run'}"]  # train() writes into the resumed run dir
    return drive(tmp / "record.json", overrides, top_k=2, retrieval="recency")


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Run:
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("split")
    return drive(tmp / "record.json", SPLIT + [f"output_dir={tmp / 'run'}"], top_k=1, retrieval="similarity")


def of(samples: list[dict], kind: str) -> list[dict]:
    return [s for s in samples if s["kind"] == kind]


def r(text: str) -> float:
    return controlled_reward(text, None)[0]


def episodes(step: dict) -> list[tuple[dict, dict, dict]]:
    """(attempt y1, reflection Δ, retry y2) per gated attempt; test_gating checks this pairing."""
    samples = step["samples"]
    gated = [a for a in of(samples, "attempt") if r(a["text"]) < GATE]
    return list(zip(gated, of(samples, "reflection"), of(samples, "retry")))


def user_text(run: Run, sample: dict) -> str:
    return f"{sample['question']}\n\n{run.record['instruction']}"


def entries(memory_state: dict) -> list[dict]:
    return memory_state["memory"]["entries"]


def bullets(reflections: list[str]) -> str:
    return "\n".join(f"- {x}" for x in reflections) if reflections else "(none)"


def trainer_state(run_dir: Path, step: int) -> dict:
    from rltool.ckpt import load_trainer_state, step_name

    return load_trainer_state(run_dir / "checkpoints" / step_name(step))


RUNS = ["packed", "split", "resumed"]


@pytest.mark.parametrize("name", RUNS)
def test_gating_picks_exactly_the_attempts_below_threshold(name, request):
    run = request.getfixturevalue(name)
    seen = {"gated": 0, "kept": 0, "at_threshold": 0}
    for step in run.steps:
        attempts = of(step["samples"], "attempt")
        assert [a["reward"] for a in attempts] == [r(a["text"]) for a in attempts]  # scored by our reward
        assert [a["feedback"] for a in attempts] == [controlled_reward(a["text"], None)[1] for a in attempts]
        failing = [a for a in attempts if r(a["text"]) < GATE]
        reflections = of(step["samples"], "reflection")
        assert len(reflections) == len(failing) == len(of(step["samples"], "retry"))
        for a, refl in zip(failing, reflections):
            assert refl["example_id"] == a["example_id"]
            prompt = refl["prompt_text"]
            assert f"Attempt:\n{a['text']}\n\nFeedback: {a['feedback']}\nReward: {a['reward']:.2f}" in prompt
            assert user_text(run, a) in prompt
        seen["gated"] += len(failing)
        seen["kept"] += len(attempts) - len(failing)
        seen["at_threshold"] += sum(a["reward"] == GATE for a in attempts)
        assert step["metrics"]["erl/gated_frac"] == len(failing) / len(attempts)
    assert seen["gated"] and seen["kept"] and seen["at_threshold"], seen  # both sides of the gate occurred


@pytest.mark.parametrize("name", RUNS)
def test_retry_prompt_has_the_plan_but_not_the_attempt_or_feedback(name, request):
    run = request.getfixturevalue(name)
    checked_y1 = 0
    for step in run.steps:
        for a, refl, retry in episodes(step):
            delta, prompt = refl["text"], retry["prompt_text"]
            assert retry["example_id"] == a["example_id"]
            assert f"{user_text(run, a)}\n\nUse this plan:\n{delta}" in prompt
            # Everything but Δ (the model may quote y1 or f1 in Δ, which is allowed):
            cut = prompt.index(f"Use this plan:\n{delta}") + len("Use this plan:\n")
            rest = prompt[:cut] + prompt[cut + len(delta):]
            assert FEEDBACK_MARK not in rest and a["feedback"] not in rest
            assert "Attempt:" not in rest and "Feedback:" not in rest and "Reward:" not in rest
            y1 = a["text"].strip()
            if len(y1) >= 8 and y1 not in a["prompt_text"]:  # a short or echoed y1 proves nothing
                assert y1 not in rest
                checked_y1 += 1
            # r2 is the retry's own reward, shared by its reflection
            assert retry["reward"] == r(retry["text"]) == refl["reward"]
    assert checked_y1 > 0


@pytest.mark.parametrize("name", RUNS)
def test_memory_stores_reflection_iff_retry_reward_above_threshold(name, request):
    run = request.getfixturevalue(name)
    stored = 0
    for step in run.steps:
        before, after = entries(step["memory_before"]), entries(step["memory_after"])
        assert after[:len(before)] == before  # FIFO of 50: nothing evicted in these short runs
        expected = [(user_text(run, a), refl["text"], step["step"])
                    for a, refl, retry in episodes(step) if retry["reward"] > MEMORY]
        assert [(e["prompt"], e["reflection"], e["step"]) for e in after[len(before):]] == expected
        assert step["metrics"]["erl/memory_size"] == len(after)
        stored += len(expected)  # r2 == 0.5 (exactly memory_threshold) is not stored
    assert stored > 0
    if name == "packed":  # the checkpoints hold the same memory the rollout had
        for step in run.steps:
            assert trainer_state(run.dir, step["step"] + 1)["rollout"] == step["memory_after"]


@pytest.mark.parametrize("name", ["packed", "resumed"])
def test_recency_retrieval_gives_the_newest_lessons(name, request):
    run = request.getfixturevalue(name)
    used = 0
    for step in run.steps:
        newest = [e["reflection"] for e in reversed(entries(step["memory_before"]))]
        for _, refl, _ in episodes(step):
            assert f"Lessons that helped before:\n{bullets(newest[:run.top_k])}{REFLECTION_END}" in refl["prompt_text"]
            used += len(newest) > 0
    assert used > 0
    if name == "resumed":  # 4+ entries restored, top 2 retrieved: a selection, not just an order
        assert len(entries(run.steps[0]["memory_before"])) > run.top_k


def test_similarity_retrieval_gives_the_most_similar_lessons(split):
    import torch
    import torch.nn.functional as F

    from rltool.actors.text_encoder import MiniLMEncoder

    encoder = MiniLMEncoder()
    used = differs_from_recency = 0
    for step in split.steps:
        stored = list(reversed(entries(step["memory_before"])))  # newest first
        for e in stored:  # embedded once, when stored
            torch.testing.assert_close(torch.tensor(e["embedding"]), encoder([e["prompt"]])[0], atol=1e-5, rtol=0)
        for a, refl, _ in episodes(step):
            expected = []
            if stored:
                sim = F.cosine_similarity(torch.tensor([e["embedding"] for e in stored]),
                                          encoder([user_text(split, a)]), dim=1)  # (M,)
                order = torch.sort(sim, descending=True, stable=True).indices[:split.top_k].tolist()
                expected = [stored[i]["reflection"] for i in order]
                used += 1
                differs_from_recency += expected != [e["reflection"] for e in stored[:split.top_k]]
            assert f"Lessons that helped before:\n{bullets(expected)}{REFLECTION_END}" in refl["prompt_text"]
    assert used > 0 and differs_from_recency > 0


@pytest.mark.parametrize("name", RUNS)
def test_internalization_trains_original_prompt_to_retry_with_prompt_masked(name, request):
    run = request.getfixturevalue(name)
    pairs = 0
    for step in run.steps:
        samples, batch = step["samples"], step["batch"]
        prompt_of = {a["example_id"]: a["prompt_ids"] for a in of(samples, "attempt")}
        good = [retry for _, _, retry in episodes(step) if retry["reward"] > DISTILL]
        distill = of(samples, "distill")
        assert len(distill) == len(good) == step["metrics"]["erl/distill_pairs"]
        for d, retry in zip(distill, good):
            assert d["prompt_ids"] == prompt_of[d["example_id"]] != retry["prompt_ids"]
            assert d["completion_ids"] == retry["completion_ids"] and d["reward"] == retry["reward"]
            assert (d["sft_weight"], d["loss_weight"], d["adv"]) == (1.0, 0.0, 0.0)
        # The Batch the loop collated: labels (sft_mask over the full row) cover y2 and nothing else.
        P = batch["prompt_width"]
        assert len(batch["input_ids"]) == len(samples)
        for s, ids, sft, rl in zip(samples, batch["input_ids"], batch["sft_mask"], batch["rl_mask"]):
            p, c = s["prompt_ids"], s["completion_ids"]
            assert ids[P - len(p):P] == p and ids[P:P + len(c)] == c
            labels = [0.0] * P + sft  # (P+T,)
            on = [i for i, v in enumerate(labels) if v == 1.0]
            if s["kind"] == "distill":
                assert on == list(range(P, P + len(c)))
                assert [ids[i] for i in on] == c
                assert sum(rl) == 0  # sft pairs stay out of the RL loss
            else:
                assert on == [] and sum(rl) == len(c)
        pairs += len(distill)
        row = run.metrics()[step["step"] + 1]
        assert ("loss/sft" in row) == bool(distill)
        assert math.isfinite(row.get("loss/sft", 0.0))
    assert pairs > 0


def grpo_by_hand(rewards: list[float]) -> list[float]:
    """(r - mean) / (unbiased std + 1e-6); 0 for a tied group or a single member."""
    n, mean = len(rewards), sum(rewards) / len(rewards)
    if n < 2 or max(rewards) == min(rewards):
        return [0.0] * n
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (n - 1))
    return [(x - mean) / (std + 1e-6) for x in rewards]


@pytest.mark.parametrize("name", RUNS)
def test_advantages_per_variant_match_hand_computation(name, request):
    run = request.getfixturevalue(name)
    nonzero = 0
    for step in run.steps:
        samples = step["samples"]
        # group structure: packed = one reflection and one retry group per step; split = per prompt
        for kind in ("reflection", "retry"):
            groups = {}
            for s in of(samples, kind):
                groups.setdefault(s["group"], set()).add(s["example_id"])
            if name == "split":
                assert all(len(ids) == 1 for ids in groups.values())
                assert len(groups) == len({s["example_id"] for s in of(samples, kind)})
            else:
                assert len(groups) <= 1
        r2_of_reflection = {id(refl): r(retry["text"]) for _, refl, retry in episodes(step)}  # Δ is rewarded with r2
        kinds_of_group = {}
        for s in samples:
            kinds_of_group.setdefault(s["group"], set()).add(s["kind"])
        assert all(len(k) == 1 for k in kinds_of_group.values())  # no group mixes kinds
        update = {"attempt": 0} | dict.fromkeys(("reflection", "retry", "distill"), int(name == "split"))
        assert all(s["update"] == update[s["kind"]] for s in samples)

        for group, kinds in kinds_of_group.items():
            members = [s for s in samples if s["group"] == group]
            if kinds == {"distill"}:  # preset by the rollout (sft), the estimator leaves it alone
                assert all(s["adv"] == 0.0 for s in members)
                continue
            expected = grpo_by_hand([r2_of_reflection.get(id(s), r(s["text"])) for s in members])
            assert [s["adv"] for s in members] == pytest.approx(expected, abs=1e-5)
            nonzero += any(abs(x) > 0 for x in expected if kinds != {"attempt"})
    assert nonzero > 0  # some reflection/retry group carried signal


@pytest.mark.parametrize("name", RUNS)
def test_loop_ran_real_steps_and_logged_erl_metrics(name, request):
    run = request.getfixturevalue(name)
    metrics = run.metrics()
    for step in run.steps:
        row, samples = metrics[step["step"] + 1], step["samples"]
        assert all(k in row for k in ERL_KEYS), sorted(row)
        attempts, eps = of(samples, "attempt"), episodes(step)
        assert row["erl/r1"] == pytest.approx(sum(a["reward"] for a in attempts) / len(attempts))
        if eps:
            assert row["erl/r2"] == pytest.approx(sum(y["reward"] for *_, y in eps) / len(eps))
            assert row["erl/lift"] == pytest.approx(sum(y["reward"] - a["reward"] for a, _, y in eps) / len(eps))
        for kind in ("attempt", "reflection", "retry"):
            assert row[f"erl/tokens_{kind}"] == sum(len(s["completion_ids"]) for s in of(samples, kind))
        assert math.isfinite(row["loss/policy"])
        assert math.isfinite(row["policy/grad_norm"]) and row["policy/grad_norm"] > 0
    assert sorted(metrics)[-1] == run.steps[-1]["step"] + 1

    # vLLM generated with the trainer's weights after every sync, and those weights moved
    probes = run.record["probes"]
    assert [p["after_step"] for p in probes] == [None] + [s["step"] for s in run.steps]
    for p in probes[1:]:
        assert max(abs(a - b) for a, b in zip(p["vllm"], p["trainer"])) < 2e-3
    assert max(abs(a - b) for a, b in zip(probes[0]["vllm"], probes[-1]["vllm"])) > 0.05

    from safetensors.torch import load_file

    from rltool.actors.embedded import materialize

    base, final = load_file(materialize() / "model.safetensors"), load_file(run.dir / "final" / "policy" / "model.safetensors")
    shared = sorted(base.keys() & final.keys())
    assert shared and all(final[k].isfinite().all() for k in shared)
    assert any(not final[k].equal(base[k]) for k in shared)


def test_split_variant_steps_the_lr_schedule_once_per_step(split):
    """Two update passes per step must not advance the schedule twice (linear would go negative)."""
    assert all(of(st["samples"], "retry") for st in split.steps)  # every step had the second pass
    metrics = split.metrics()
    assert [metrics[s]["perf/lr"] for s in (1, 2, 3)] == pytest.approx([LR * 2 / 3, LR / 3, 0.0], abs=1e-12)


def test_eval_leaves_memory_unchanged(packed):
    evals = packed.record["evals"]
    assert [e["after_rollouts"] for e in evals] == [0, 1, 2]  # step 0, eval_every=1, final
    for e in evals:
        assert e["memory_after"] == e["memory_before"]
    assert any(entries(e["memory_before"]) for e in evals)
    steps = packed.steps
    assert steps[1]["memory_before"] == steps[0]["memory_after"]  # nothing between rollouts touched it
    assert packed.record["final_memory"] == steps[-1]["memory_after"]
    metrics = packed.metrics()
    assert all("eval/accuracy_strict" in metrics[s] for s in (0, 1, 2))


def test_resume_restores_memory_and_continues_at_step_3(packed, resumed):
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    assert [s["step"] for s in resumed.steps] == [2]  # 0-based: the third step
    restored = resumed.steps[0]["memory_before"]
    assert restored == trainer_state(packed.dir, 2)["rollout"] == packed.steps[-1]["memory_after"]
    assert entries(restored)
    state = trainer_state(resumed.dir, 3)
    assert state["step"] == 3 and state["rollout"] == resumed.steps[0]["memory_after"]
    metrics = resumed.metrics()
    assert sorted(metrics) == [3] and all(k in metrics[3] for k in ERL_KEYS)
