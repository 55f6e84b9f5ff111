"""AGRL from the CLI on the embedded model with real vLLM (eager, tiny shapes): episodes of queries and
attention selection train a LoRA query writer, metrics and held-out ordering evals are logged, and a
resume from a checkpoint restores the trajectory filter's statistics and draws the same articles."""
import json
import math

import pytest

from helpers import by_step, read_jsonl, rltool

AGRL = ["algo=agrl", "env=article_curriculum", "hardware=cpu", "rollout.enforce_eager=true",
        "hardware.vllm_kv_cache_gib=1", "trainer.prompts_per_step=2", "trainer.group_size=2",
        "trainer.micro_batch_size=4", "rollout.max_new_tokens=8", "env.pairs_per_episode=3", "eval.size=4",
        "trainer.lr=1e-3", "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=2"]


@pytest.fixture(scope="module")
def agrl_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("agrl")
    rltool("train", *AGRL, f"hydra.run.dir={run}")
    return run


def test_agrl_trains_the_query_writer_and_logs_its_episodes(agrl_run):
    rows = [r for r in read_jsonl(agrl_run / "metrics.jsonl") if "time/step" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # 3 pairs: 2 query steps (the last pair is read without a choice), so entropy <= ln 3
        assert 0 < r["agrl/selection_entropy"] <= math.log(3) + 1e-6
        assert 0 <= r["agrl/first_pick_root"] <= 1
        assert all(r[f"agrl/value_logp_t{t}"] < 0 for t in (1, 2, 3)) and "agrl/value_logp_t4" not in r
        assert r["agrl/reward_vs_baseline"] == pytest.approx(r["agrl/reward"] - r["agrl/baseline_reward"], abs=1e-5)
        assert 0 < r["agrl/query_len"] <= 8
        assert 0 < r["filter/kept_frac"] <= 1
    assert rows[0]["agrl/advantage_baseline"] == 0.0  # no earlier batch
    assert any(r["update/rows"] > 0 and r["policy/grad_norm"] > 0 for r in rows)
    assert rows[1]["policy/ref_kl"] > 0  # the LoRA policy moved away from its base (the KL reference)
    evals = [r for r in read_jsonl(agrl_run / "metrics.jsonl") if "eval/agrl/learned_minus_random" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for r in evals:
        assert r["eval/agrl/articles"] == 4 and r["eval/agrl/learned_minus_random_se"] >= 0
        assert r["eval/agrl/learned_minus_random"] == pytest.approx(
            r["eval/agrl/value_logp_learned"] - r["eval/agrl/value_logp_random"], abs=1e-5)
    assert evals[0]["eval/agrl/value_logp_random"] != evals[1]["eval/agrl/value_logp_random"]  # scored by the trained policy
    episodes = [json.loads(line) for line in (agrl_run / "samples.jsonl").read_text().splitlines()]
    assert episodes and all(len(e["queries"]) == 2 and len(e["read"]) == 3 for e in episodes)
    assert all(e["id"].startswith("family-heldout-") for e in episodes)
    for e in episodes:  # `random` is the mean over algo.agrl.eval_random_orders (4) different orderings
        each = e["value_logp"]["random_each"]
        assert len(each) == 4 and len(set(each)) > 1
        assert e["value_logp"]["random"] == pytest.approx(sum(each) / 4, abs=1e-6)
    card = (agrl_run / "final" / "policy" / "README.md").read_text()
    assert "mean log-prob of the values read" in card and "gsm8k" not in card  # the reward AGRL trains on


def test_agrl_resume_restores_the_filter_and_draws_the_same_articles(agrl_run):
    metrics = read_jsonl(agrl_run / "metrics.jsonl")
    uninterrupted = by_step(metrics, "agrl/advantage_baseline")[2]
    order = by_step(read_jsonl(agrl_run / "data_order.jsonl"), "examples")[2]
    assert uninterrupted != 0.0  # the running mean of step 1's rewards
    out = rltool("train", *AGRL, f"resume={agrl_run / 'checkpoints' / 'step_000001'}", "eval.enabled=false")
    assert "resumed from" in out.stdout
    metrics = read_jsonl(agrl_run / "metrics.jsonl")
    assert by_step(metrics, "agrl/advantage_baseline")[2] == pytest.approx(uninterrupted, abs=1e-12)
    assert by_step(read_jsonl(agrl_run / "data_order.jsonl"), "examples")[2] == order


def test_agrl_trains_the_selector_through_the_policys_hidden_states_against_a_group_baseline(tmp_path):
    run = tmp_path / "hidden"
    rltool("train", *[o for o in AGRL if not o.startswith("trainer.max_steps")], "trainer.max_steps=1",
           "eval.enabled=false", "algo.agrl.embedding=hidden", "algo.agrl.learn_selection=true",
           "algo.agrl.filter=percentile", "algo.agrl.filter_top_percent=50", "algo.agrl.baseline=group",
           f"hydra.run.dir={run}")
    (row,) = [r for r in read_jsonl(run / "metrics.jsonl") if "time/step" in r]
    assert row["filter/kept_frac"] == 0.5 and row["update/rows"] == 4  # 2 of 4 episodes x 2 queries
    assert row["loss/select"] != 0 and row["policy/select_logp"] <= 0
    assert 0 < row["agrl/selection_entropy"] <= math.log(3) + 1e-6
    # group baseline: each article's 2 orderings are compared with each other, so their gaps cancel
    assert row["agrl/reward_vs_baseline"] == pytest.approx(0.0, abs=1e-5)


def test_agrl_under_zero3_when_the_filter_leaves_one_rank_nothing(tmp_path):
    """4 episodes over 2 ranks, the top 25% kept: one rank trains on nothing and must still join the
    update's collectives (it runs a zero-weight row), else the ranks deadlock or abort."""
    run = tmp_path / "zero3"
    rltool("train", *[o for o in AGRL if o not in ("hardware=cpu", "trainer.max_steps=2")], "hardware=cpu_zero3",
           "trainer.max_steps=1", "eval.enabled=false", "algo.agrl.filter=percentile", "algo.agrl.filter_top_percent=25",
           f"hydra.run.dir={run}")
    (row,) = [r for r in read_jsonl(run / "metrics.jsonl") if "time/step" in r]
    assert row["filter/kept_frac"] == 0.25 and row["update/rows"] == 2  # 1 episode x 2 queries, over both ranks
    assert row["policy/grad_norm"] > 0
    assert (run / "checkpoints" / "step_000001").is_dir() and (run / "final" / "policy").is_dir()
