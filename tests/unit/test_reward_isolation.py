"""A reward that misbehaves costs its rows, never the run: bad return values (in training, eval's
pass@n and feedback functions), sys.exit, hung rows waited on together, a deadline no reward can
cancel, and a reward phase with its own deadline. Real rewards in a real file, real worker
processes, real sleeps, real math_verify, two real gloo ranks."""
import contextlib
import io
import socket
import subprocess
import sys
import time

import pytest

from rltool.records import Completion, Sample, collate
from rltool.config import RewardConfig, RewardTerm
from rltool.envs.base import Example
from rltool.logs import Tally
from rltool.rewards.score import Scorer
from rltool.schemas import algo_config

REWARDS = '''
import math, sys, time
import numpy as np
from rltool.rewards.registry import feedback, reward
from rltool.rewards.math_verify import math_verify_reward

BAD = {"str": "1e39", "numeric_str": "1.0", "list": [1.0], "object": object(), "huge": 1e39, "big_int": 10**400,
       "nan": math.nan, "inf": -math.inf, "tuple3": (1.0, "a", "b"), "feedback_int": (1.0, 7)}
GOOD = {"true": True, "false": False, "int": 2, "float32_max": 3.4028234e38, "np_float": np.float32(0.5),
        "np_bool": np.bool_(True), "pair": (0.25, "why"), "none": None}

@reward("iso_value")
def value(completion):
    return BAD[completion] if completion in BAD else GOOD[completion]

@reward("iso_batched", batched=True)  # what it returns for two rows, chosen by the first row
def batched(completions):
    return {"none": None, "str": "ab", "short": [1.0], "scalar": 1.0, "dict": {"a": 1, "b": 2},
            "mixed": [1.0, "x"], "array": np.array([1.0, 0.5]), "ok": [1.0, 0.5]}[completions[0]]

@reward("iso_exit")
def leaves(completion):
    if completion == "exit":
        sys.exit(3)
    return 1.0

@reward("iso_hang")
def hang(completion):
    if completion == "hang":
        time.sleep(60)
    return 1.0

@reward("iso_slow")
def slow(completion):
    time.sleep(0.6)
    return 1.0

@reward("iso_deaf")  # blocks the signals the deadline could send, then waits (as C code that retries on EINTR)
def deaf(completion):
    import signal
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
    time.sleep(60)
    return 1.0

@reward("iso_cancels")  # math_verify sets and cancels signal.alarm; then this overruns
def cancels(completion, example):
    math_verify_reward("\\\\boxed{18}", example)
    time.sleep(4)
    return 1.0

@reward("iso_swallows")  # catches the deadline and keeps going
def swallows(completion):
    try:
        time.sleep(4)
    except BaseException:
        time.sleep(4)
    return 1.0

@feedback("iso_feedback")
def says(completion, example):
    return {"boom": lambda: 1 / 0, "int": lambda: 7}.get(completion, lambda: "fine")()
'''


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "iso_rewards.py"
    path.write_text(REWARDS)
    return str(path)


def scorer(module, name, **extra) -> Scorer:
    cfg = RewardConfig(name="t", terms=[RewardTerm(name)], success=name, module=module)
    for key, value in extra.items():
        setattr(cfg, key, value)
    return Scorer(cfg, max_new_tokens=8)


def ex() -> Example:
    return Example("1", "What is 9 * 2?", "18")


def score(s: Scorer, completions: list[str]):
    return s.score_batch(completions, [ex()] * len(completions), [1] * len(completions))


# ---------------------------------------------------------------- bad values: unscored, counted, named

@pytest.mark.parametrize("key, kind", [("str", "str"), ("numeric_str", "str"), ("list", "list"), ("object", "object"),
                                       ("huge", "float"), ("big_int", "int"), ("nan", "float"), ("inf", "float"),
                                       ("tuple3", "tuple"), ("feedback_int", "tuple")])
def test_a_bad_value_is_an_unscored_row_counted_and_named_by_type(module, key, kind):
    s = scorer(module, "iso_value")
    out = score(s, ["int", key, "true"])
    assert [o.reward for o in out] == [2.0, None, 1.0]  # the run goes on; the other rows keep their values
    m = s.step_metrics()
    assert m["reward/failed/iso_value"] == 1.0 and m["reward/failed_frac/iso_value"] == 1 / 3
    assert f"returned {kind}" in s.last_error["iso_value"], s.last_error


def test_what_counts_as_a_number():
    # TRL's rewards are float | None, turned into a float32 tensor: bools and numpy scalars are numbers,
    # a number float32 can hold is kept, None is "could not score" (counted, as before)
    from rltool.rewards.values import reward_value

    assert reward_value(True) == (1.0, "", None) and reward_value(False) == (0.0, "", None)
    assert reward_value(3.4028234e38)[0] == 3.4028234e38
    assert reward_value((0.25, "why")) == (0.25, "why", None)
    assert reward_value(None) == (None, "", None)
    value, text, bad = reward_value(1e39)
    assert value is None and "float32" in bad
    value, text, bad = reward_value("1e39")
    assert value is None and bad.startswith("returned str '1e39'")


def test_good_values_of_every_accepted_type(module):
    s = scorer(module, "iso_value")
    out = score(s, ["true", "false", "int", "float32_max", "np_float", "np_bool", "pair", "none"])
    assert [o.parts["iso_value"] for o in out] == [1.0, 0.0, 2.0, 3.4028234e38, 0.5, 1.0, 0.25, None]
    assert s.step_metrics()["reward/failed/iso_value"] == 1.0  # None: could not score, counted as before
    assert "returned None" in s.last_error["iso_value"]


@pytest.mark.parametrize("first, kind", [("none", "NoneType"), ("str", "str"), ("short", "1 values for 2"),
                                         ("scalar", "float"), ("dict", "dict")])
def test_a_batched_reward_returning_no_list_of_values_leaves_its_rows_unscored(module, first, kind):
    s = scorer(module, "iso_batched")
    assert [o.reward for o in score(s, [first, "x"])] == [None, None]
    assert s.step_metrics()["reward/failed/iso_batched"] == 2.0
    assert kind in s.last_error["iso_batched"], s.last_error


def test_a_batched_reward_with_one_bad_entry_costs_that_row_only(module):
    s = scorer(module, "iso_batched")
    assert [o.reward for o in score(s, ["mixed", "x"])] == [1.0, None]
    assert [o.reward for o in score(s, ["array", "x"])] == [1.0, 0.5]  # a numpy array is a list of numbers
    assert "returned str 'x'" in s.last_error["iso_batched"]


def test_sys_exit_in_an_in_process_reward_is_an_unscored_row(module):
    s = scorer(module, "iso_exit")
    assert [o.reward for o in score(s, ["ok", "exit", "ok"])] == [1.0, None, 1.0]  # the process is still here
    assert s.last_error["iso_exit"] == "SystemExit: 3"


def test_a_failing_feedback_function_leaves_its_row_unscored_and_counted(module):
    s = scorer(module, "iso_value", feedback="iso_feedback")
    out = score(s, ["int", "boom", "true"])
    assert [o.reward for o in out] == [None, None, 1.0]  # "int": the feedback returned 7, not text
    assert [o.feedback for o in out] == ["", "", "fine"]
    assert s.step_metrics()["reward/failed/iso_feedback"] == 2.0
    assert "iso_feedback" in s.last_error


class Replay:
    """Stands in for the vLLM engine of eval (not under test): each prompt's eval.n completions are given."""

    def __init__(self, texts: list[list[str]]):
        self.texts = texts

    def generate(self, prompts, sampling):
        assert len(prompts) == len(self.texts)
        return [[Completion(token_ids=[1], logp=[0.0], text=t, truncated=False) for t in ts] for ts in self.texts]


def test_eval_pass_at_n_scores_bad_values_as_not_solved_and_counts_them(module):
    from types import SimpleNamespace

    from rltool.evaluate import pass_at_n

    cfg = SimpleNamespace(reward=RewardConfig(name="t", terms=[RewardTerm("iso_value")], success="iso_value",
                                              module=module),
                          eval=SimpleNamespace(n=2, temperature=1.0, max_new_tokens=8), seed=0,
                          rollout=SimpleNamespace(max_new_tokens=8))
    engine = Replay([["str", "false"], ["huge", "int"], ["object", "list"]])
    assert pass_at_n(engine, [[1]] * 3, [ex()] * 3, cfg) == 1  # only the second problem has a good, correct sample
    s = scorer(module, "iso_value")
    assert pass_at_n(engine, [[1]] * 3, [ex()] * 3, cfg, scorer=s) == 1
    assert s.step_metrics()["reward/failed/iso_value"] == 4.0


# ---------------------------------------------------------------- values float32 cannot hold, at the advantage

def test_a_reward_float32_cannot_hold_is_unscored_at_the_advantage():
    from rltool.update import compute_advantages, rollout_metrics

    # an env that sets Sample.reward itself (no Scorer in between): 1e39 would be inf in float32
    samples = [Sample(prompt_ids=[1], completion_ids=[2], sample_logp=[0.0], group=0, reward=r)
               for r in (1.0, 0.0, 1e39, 0.0)]
    cfg = type("C", (), {"algo": algo_config(name="t", advantage="dr_grpo")})()
    compute_advantages(samples, collate(samples, pad_id=0), cfg)
    # dr_grpo: r - mean over the scored rows (1, 0, 0): mean 1/3; the unscored row gets 0
    assert [s.adv for s in samples] == pytest.approx([2 / 3, -1 / 3, 0.0, -1 / 3])
    assert samples[2].reward is None and rollout_metrics(samples)["reward/unscored"] == 1.0


# ---------------------------------------------------------------- time limits

def test_hung_rows_on_four_workers_are_waited_on_together(module):
    s = scorer(module, "iso_hang", timeout_s=1.0, workers=4)
    try:
        assert [o.reward for o in score(s, ["ok"] * 4)] == [1.0] * 4  # starts the four workers
        started = time.perf_counter()
        assert [o.reward for o in score(s, ["hang"] * 4)] == [None] * 4
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, elapsed  # one timeout for the four, not one after another (4 s)
    finally:
        s.close()


@pytest.mark.parametrize("name", ["iso_cancels", "iso_swallows"])
def test_no_reward_can_cancel_its_deadline(module, name):
    s = scorer(module, name, timeout_s=1.0)
    started = time.perf_counter()
    assert [o.reward for o in score(s, ["x"])] == [None]
    assert time.perf_counter() - started < 2.0  # not 4 s: cut at the deadline
    assert s.last_error[name] == "timed out after 1 s"


def test_the_reward_phase_has_its_own_budget(module):
    s = scorer(module, "iso_slow", timeout_s=5.0, phase_timeout_s=1.0)
    started = time.perf_counter()
    out = score(s, ["a", "b", "c", "d"])
    assert time.perf_counter() - started < 2.0  # not 2.4 s: the phase stops at its deadline
    assert [o.reward for o in out][:1] == [1.0] and out[-1].reward is None
    assert "reward.phase_timeout_s" in s.last_error["iso_slow"]


def run_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "phase.py"
    script.write_text("import time\n"
                      "from rltool.config import RewardConfig, RewardTerm\n"
                      "from rltool.envs.base import Example\n"
                      "from rltool.rewards.score import Scorer\n"
                      "from rltool.watchdog import deadline\n"
                      "if __name__ == '__main__':\n" + body)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)


def test_reward_time_does_not_count_against_the_generate_deadline(module, tmp_path):
    proc = run_script(tmp_path, f'''
    cfg = RewardConfig(name="t", terms=[RewardTerm("iso_slow")], success="iso_slow", module={module!r})
    s = Scorer(cfg, max_new_tokens=8)
    with deadline("generate", 7, 1.0):
        out = s.score_batch(["a", "b", "c"], [Example("1", "q", "a")] * 3, [1] * 3)  # 1.8 s of rewards
        time.sleep(0.5)  # and 0.5 s of "generation"
    print("scored", [o.reward for o in out])
''')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "scored [1.0, 1.0, 1.0]"


def test_a_reward_that_ignores_signals_stops_the_run_naming_the_reward_phase(module, tmp_path):
    started = time.perf_counter()
    proc = run_script(tmp_path, f'''
    cfg = RewardConfig(name="t", terms=[RewardTerm("iso_deaf")], success="iso_deaf", module={module!r})
    cfg.timeout_s, cfg.phase_timeout_s = 0.5, 1.0
    s = Scorer(cfg, max_new_tokens=8)
    with deadline("generate", 7, 60):
        s.score_batch(["a"], [Example("1", "q", "a")], [1])
''')
    assert time.perf_counter() - started < 30
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("rltool: stopped: step 7: reward did not finish within 2 s (reward.phase_timeout_s"), line


# ---------------------------------------------------------------- several ranks: rank 0 says it

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_worker(rank: int, port: int, module: str, out) -> None:
    import torch.distributed as dist

    from rltool import dist as rdist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        s = scorer(module, "iso_value")
        score(s, ["int", "str"] if rank == 1 else ["int", "true"])  # the bad row is on rank 1 only
        local = s.step_metrics()
        metrics = rdist.combine_metrics(local, summed=tuple(k for k in local if k.startswith("reward/failed/")))
        reasons = s.errors_over_ranks(metrics)
        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            Tally(enabled=rank == 0).add_metrics(5, metrics, reasons)
        out[rank] = {"failed": metrics["reward/failed/iso_value"], "said": said.getvalue()}
    finally:
        dist.destroy_process_group()


def test_a_bad_row_on_another_rank_is_counted_and_said_by_rank_0(module):
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(rank_worker, args=(free_port(), module, out), nprocs=2, join=True)
    assert out[0]["failed"] == out[1]["failed"] == 1.0
    assert out[1]["said"] == ""
    lines = out[0]["said"].splitlines()
    assert len(lines) == 1 and "reward 'iso_value'" in lines[0] and "returned str '1e39'" in lines[0], lines
