"""metrics.jsonl, wandb offline, the plain progress line, phase timing and the curves plot."""
import json
import time

import torch

from rltool.metrics import MetricsLog, PhaseTimer, Progress, read_metrics
from rltool.plot import plot_run, summarize_eval


def test_log_writes_one_json_line_per_call_and_converts_tensors(tmp_path):
    log = MetricsLog(tmp_path, enabled=True, logger="none", config={}, run_name="t")
    log.log(1, {"reward/mean": torch.tensor(0.25), "loss/policy": 0.5})
    log.log(2, {"reward/mean": torch.tensor(0.75, dtype=torch.float64)})
    log.log_samples(2, [{"prompt": "1+1", "completion": "2", "reward": torch.tensor(1.0)}])
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l) for l in lines] == [{"step": 1, "reward/mean": 0.25, "loss/policy": 0.5},
                                             {"step": 2, "reward/mean": 0.75}]
    assert json.loads((tmp_path / "samples.jsonl").read_text()) == {"step": 2, "prompt": "1+1", "completion": "2",
                                                                    "reward": 1.0}


def test_read_metrics_merges_rows_of_one_step(tmp_path):
    log = MetricsLog(tmp_path, enabled=True, logger="none", config={}, run_name="t")
    log.log(1, {"reward/mean": 0.1})
    log.log(1, {"eval/accuracy_strict": 0.3})
    log.log(2, {"reward/mean": 0.2})
    log.log(2, {"reward/mean": 0.4})  # re-run after a resume: the later value wins
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 1, "reward/mean": 0.1, "eval/accuracy_strict": 0.3}, {"step": 2, "reward/mean": 0.4}]


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(tmp_path / "run", enabled=False, logger="wandb", config={}, run_name="t")
    log.log(1, {"reward/mean": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_wandb_offline_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLog(tmp_path, enabled=True, logger="wandb", config={"seed": 1}, run_name="offline") as log:
        log.log(1, {"reward/mean": torch.tensor(0.5)})
        log.log_samples(1, [{"prompt": "p", "completion": "c", "reward": 1.0}])
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_progress_prints_plain_lines_when_not_a_tty(capsys):
    with Progress(total_steps=4, start_step=1, enabled=True) as progress:
        progress.update(2, {"reward/mean": torch.tensor(0.125), "eval/accuracy_strict": 0.05,
                            "loss/kl": 0.001, "perf/tokens_per_s": 85.4}, {"generate": 10.21, "update": 3.1})
        progress.update(3, {"reward/mean": 0.5}, {"generate": 9.0, "sync": 0.8})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("step 2/4 | reward 0.125 | acc 0.05 | kl 0.001 | 85 tok/s | gen 10.2s upd 3.1s | eta ")
    assert lines[1].startswith("step 3/4 | reward 0.5 | acc 0.05 | gen 9.0s sync 0.8s | eta ")  # acc is sticky


def test_progress_shows_the_success_rate_where_an_env_logs_no_accuracy(capsys):
    with Progress(total_steps=2, start_step=0, enabled=True) as progress:
        progress.update(1, {"reward/mean": 0.5, "eval/success": 0.25, "eval/reward": 0.75}, {})
    assert capsys.readouterr().out.startswith("step 1/2 | reward 0.5 | acc 0.25 | eta ")


def test_disabled_progress_prints_nothing(capsys):
    with Progress(total_steps=4, start_step=0, enabled=False) as progress:
        progress.update(1, {"reward/mean": 0.5}, {"generate": 1.0})
    assert capsys.readouterr().out == ""


def test_phase_timer_accumulates_and_resets():
    timer = PhaseTimer()
    for _ in range(2):
        with timer("generate"):
            time.sleep(0.01)
    with timer("update"):
        pass
    split = timer.split()
    assert list(split) == ["generate", "update"]
    assert 0.02 <= split["generate"] < 1.0
    assert timer.split() == {}


def test_plot_run_writes_png_and_summarize_eval_returns_eval_rows(tmp_path):
    with MetricsLog(tmp_path, enabled=True, logger="none", config={}, run_name="t") as log:
        for step in range(1, 6):
            log.log(step, {"reward/mean": 0.1 * step, "reward/success": 0.05 * step, "loss/kl": 0.001 * step})
            if step % 2 == 0:
                log.log(step, {"eval/accuracy_strict": 0.2 * step, "eval/format_rate": 0.9})
    png = plot_run(tmp_path)
    assert png == tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert summarize_eval(tmp_path) == [(2, {"eval/accuracy_strict": 0.4, "eval/format_rate": 0.9}),
                                        (4, {"eval/accuracy_strict": 0.8, "eval/format_rate": 0.9})]


def test_tensorboard_event_file_holds_the_step_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, enabled=True, logger=["tensorboard"], config={}, run_name="t")
    log.log(1, {"reward/mean": torch.tensor(0.25), "loss/policy": 0.5})
    log.log(2, {"reward/mean": 0.75, "eval/accuracy_strict": 0.5})
    log.close()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"reward/mean", "loss/policy", "eval/accuracy_strict"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy_strict")] == [(2, 0.5)]
