"""Faults in one step (#14): rewards that raise, return nan/inf/None or hang; non-finite updates;
a metrics line cut short by a crash. Each test injects the real fault (a real exception, a real
sleep in a real worker process, a real nan loss through a real AdamW, a really truncated file)."""
import json
import math
import multiprocessing as mp
import sys
import time

import psutil
import pytest
import torch

from rltool import train_backend
from rltool.config import RewardConfig, RewardTerm
from rltool.envs.base import Example
from rltool.guard import RunAborted, StepGuard
from rltool.metrics import MetricsLog, read_jsonl, read_metrics
from rltool.rewards.score import Scorer

REWARDS = '''
import math, time
from rltool.rewards.registry import reward

@reward("rel_flaky")  # raises on "boom", nan on "nan", inf on "inf", None on "none", 1.0 otherwise
def flaky(completion):
    if completion == "boom":
        raise ValueError("cannot parse " + completion)
    return {"nan": math.nan, "inf": math.inf, "none": None}.get(completion, 1.0)

@reward("rel_hang")  # sleeps far past any timeout on "hang"
def hang(completion):
    if completion == "hang":
        time.sleep(120)
    return 1.0

@reward("rel_always_fails", batched=True)
def always_fails(completions):
    raise KeyError("judge unreachable")
'''


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    """One reward file for the module: a file registers its names once per process."""
    path = tmp_path_factory.mktemp("rewards") / "rewards.py"
    path.write_text(REWARDS)
    return str(path)


def scorer(module, name, **extra):
    cfg = RewardConfig(name="t", terms=[RewardTerm(name)], success=name, module=module)
    for key, value in extra.items():  # reward.timeout_s / reward.workers: not in the schema yet
        setattr(cfg, key, value)
    return Scorer(cfg, max_new_tokens=8)


def score(s, completions):
    ex = Example("1", "q", "a")
    return s.score_batch(completions, [ex] * len(completions), [1] * len(completions))


def test_raising_nan_inf_none_rewards_leave_samples_unscored_and_counted(module):
    s = scorer(module, "rel_flaky")
    out = score(s, ["ok", "boom", "nan", "inf", "none", "ok"])
    assert [o.reward for o in out] == [1.0, None, None, None, None, 1.0]  # the run goes on; no 0 stands in
    m = s.step_metrics()
    assert m["reward/failed/rel_flaky"] == 4.0 and m["reward/failed_frac/rel_flaky"] == 4 / 6
    assert s.last_error["rel_flaky"] == "ValueError: cannot parse boom"  # names the error, not a wrapper
    assert s.step_metrics() == {}  # counts start again each step


def test_unscored_samples_get_zero_advantage_and_stay_out_of_the_baseline():
    from rltool.algos.advantages import ADVANTAGES

    # one group of 4; two rewards failed (None: 0.0 placeholders, valid=False, as compute_advantages builds them)
    rewards, valid = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([True, False, True, False])
    adv = ADVANTAGES["grpo"](rewards, torch.zeros(4, dtype=torch.long), valid)
    assert torch.isfinite(adv).all() and adv[1] == 0 and adv[3] == 0
    assert adv[0] > 0 > adv[2]  # baseline = mean(1, 0): the failed samples are not counted as 0s


@pytest.mark.parametrize("workers", [0, 1])
def test_hanging_reward_times_out_and_leaves_no_process(module, workers):
    before = {p.pid for p in leftover_processes()}  # e.g. wandb's service from another test
    s = scorer(module, "rel_hang", timeout_s=0.5, workers=workers)
    started = time.perf_counter()
    out = score(s, ["ok", "hang", "ok"])
    assert time.perf_counter() - started < 20  # not 120: the hung call was cut at its deadline
    assert [o.reward for o in out] == [1.0, None, 1.0]
    assert s.step_metrics()["reward/failed/rel_hang"] == 1.0
    assert s.last_error["rel_hang"] == "timed out after 0.5 s"
    assert [o.reward for o in score(s, ["ok"])] == [1.0]  # a killed worker is replaced
    s.close()
    assert not mp.active_children() and {p.pid for p in leftover_processes()} <= before


def leftover_processes():
    """This process's children, but multiprocessing's resource tracker (one per interpreter, started
    by the first spawn, gone when the interpreter is: it reads EOF on its pipe)."""
    return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


def test_failing_reward_stops_the_run_after_its_streak_with_one_line(module):
    s = scorer(module, "rel_always_fails")
    guard = StepGuard(max_failure_frac=0.5, max_failed_steps=3)
    for step in (1, 2):
        assert [o.reward for o in score(s, ["a", "b"])] == [None, None]
        guard.check(step, s.step_metrics(), s.last_error)  # tolerated: two bad steps
    score(s, ["a", "b"])
    with pytest.raises(RunAborted) as e:
        guard.check(3, s.step_metrics(), s.last_error)
    assert str(e.value).count("\n") == 0
    assert "'rel_always_fails'" in str(e.value) and "KeyError: 'judge unreachable'" in str(e.value)


def test_a_good_step_resets_the_failure_streak():
    guard = StepGuard(max_failure_frac=0.5, max_failed_steps=2)
    bad, good = {"reward/failed_frac/r": 1.0}, {"reward/failed_frac/r": 0.25}
    for step, m in enumerate([bad, good, bad, good, bad]):
        guard.check(step, m)
    with pytest.raises(RunAborted):
        guard.check(9, bad)


def test_nonfinite_loss_skips_the_update_and_leaves_weights_and_adam_untouched():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    train_backend.pop_skipped_nonfinite()
    for poison in (float("nan"), float("inf")):
        (model(torch.ones(1, 3)).sum() * poison).backward()  # what an inf reward's advantage does
        norm = train_backend.step(model, opt, grad_clip=1.0)
        assert not math.isfinite(float(norm))
    assert train_backend.pop_skipped_nonfinite() == 2.0 and train_backend.pop_skipped_nonfinite() == 0.0
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None  # skipped, and the poisoned gradient is gone
    assert not opt.state  # Adam's moments were never fed the nan
    model(torch.ones(1, 3)).sum().backward()
    assert math.isfinite(float(train_backend.step(model, opt, grad_clip=1.0)))
    assert not torch.equal(model.weight, before[0]) and torch.isfinite(model.weight).all()
    assert train_backend.pop_skipped_nonfinite() == 0.0


def test_nonfinite_streak_stops_the_run():
    guard = StepGuard(max_nonfinite_steps=2)
    guard.check(1, {"update/skipped_nonfinite": 1.0})
    with pytest.raises(RunAborted, match="nan/inf for 2 steps in a row"):
        guard.check(2, {"update/skipped_nonfinite": 1.0})


def test_partial_last_metrics_line_is_skipped_and_the_next_write_starts_a_new_line(tmp_path):
    with MetricsLog(tmp_path, enabled=True) as log:
        log.log(1, {"loss/policy": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss/pol')  # killed mid-write
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss/policy": 0.5}]
    with MetricsLog(tmp_path, enabled=True) as log:  # the resumed run appends
        log.log(2, {"loss/policy": 0.25})
        log.log_samples(2, [{"completion": "x"}])
    rows, skipped = read_jsonl(tmp_path / "metrics.jsonl")
    assert skipped == 1 and [r["step"] for r in rows] == [1, 2]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert json.loads((tmp_path / "samples.jsonl").read_text())["completion"] == "x"


def test_a_hung_phase_exits_with_one_line_and_leaves_no_process(module, tmp_path):
    """A real hang (sleep standing in for a stuck engine call) in a real process with a real reward
    worker child: past rollout.timeout_s the process says which phase and step, kills the worker, exits 3."""
    import subprocess

    script = tmp_path / "hang.py"
    script.write_text(f'''
import time, multiprocessing as mp
from rltool.config import RewardConfig, RewardTerm
from rltool.envs.base import Example
from rltool.rewards.score import Scorer
from rltool.watchdog import deadline
if __name__ == "__main__":  # spawned workers import this file again
    cfg = RewardConfig(name="t", terms=[RewardTerm("rel_flaky")], success="rel_flaky", module={module!r})
    cfg.workers = 1
    s = Scorer(cfg, max_new_tokens=8)
    s.score_batch(["ok"], [Example("1", "q", "a")], [1])  # starts the worker process
    print("worker", mp.active_children()[0].pid, flush=True)
    with deadline("generate", 7, 0.5):
        time.sleep(60)
''')
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - started < 30
    assert proc.returncode == 3, proc.stderr
    worker_line, line = proc.stdout.strip().splitlines()
    assert line == "rltool: stopped: step 7: generate did not finish within 0.5 s (rollout.timeout_s); exiting"
    assert not psutil.pid_exists(int(worker_line.split()[1])) or \
        psutil.Process(int(worker_line.split()[1])).status() == psutil.STATUS_ZOMBIE


def test_a_raising_phase_is_one_line_naming_phase_and_step():
    from rltool.watchdog import deadline

    with pytest.raises(RunAborted) as e:
        with deadline("generate", 4, 30):
            raise RuntimeError("EngineCore died unexpectedly\nmore detail")
    assert str(e.value) == ("step 4: generate raised RuntimeError: EngineCore died unexpectedly "
                            "(traceback in logs/rank<r>.log)")
    assert not e.value.save  # the last checkpoint stays the newest
