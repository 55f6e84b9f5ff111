"""scripts/learning_report.py on a hand-made run directory, written with rltool's own MetricsLog;
every number checked below is worked out by hand in the comments."""
import csv
import importlib.util
import shutil
from pathlib import Path

import pytest

from rltool.metrics import MetricsLog

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "learning_report.py"
spec = importlib.util.spec_from_file_location("learning_report", SCRIPT)
lr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lr)

CONFIG = """\
algo: {name: grpo, kl_coef: 0.001}
env: {name: arithmetic}
reward: {name: arithmetic, success: gsm8k_flexible}
trainer: {lr: 2.0e-05, group_size: 8, prompts_per_step: 4}
rollout: {temperature: 1.0}
eval: {log_samples: 4}
"""
PROBLEMS = [("What is 12 + 34?", "46"), ("What is 25 + 19?", "44"), ("What is 50 - 61?", "-11"), ("What is 12 * 34?", "408")]
# accuracy_flexible and tokens per problem at each eval that logged rows; accuracy_strict is 0 throughout
# (the run's success is gsm8k_flexible, so the report must read the flexible column)
ROWS = {0: ([1, 0, 0, 0], [10, 20, 30, 40]), 4: ([1, 1, 1, 0], [12, 14, 30, 60])}
EVALS = {0: 0.25, 2: 0.75, 4: 0.5}  # eval/accuracy_flexible over the whole held-out set: best 0.75 at 2, final 0.5
TRAIN = {  # step -> reward, entropy, ref_kl, all_wrong, all_right, no_signal, len
    1: (0.1, 1.0, 0.00, 0.75, 0.00, 0.75, 100.0),
    2: (0.2, 0.8, 0.01, 0.50, 0.00, 0.50, 90.0),
    3: (0.3, 0.6, 0.02, 0.50, 0.25, 0.75, 80.0),
    4: (0.4, 0.4, 0.03, 0.25, 0.25, 0.50, 70.0),
}


def make_run(path: Path, final: float = EVALS[4]) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(CONFIG)
    with MetricsLog(path, enabled=True) as log:  # the same writer as the training loop: same file formats
        for step in range(5):
            if step in TRAIN:
                r, ent, kl, wrong, right, flat, length = TRAIN[step]
                log.log(step, {"reward/mean": r, "reward/success": r, "policy/entropy_trained": ent, "policy/ref_kl": kl,
                               "policy/approx_kl": 0.0, "rollout/groups_all_wrong": wrong,
                               "rollout/groups_all_right": right, "rollout/groups_no_signal": flat,
                               "rollout/len": length, "rollout/truncated": 0.0})
            if step in EVALS:  # run_eval logs eval metrics at the step after the train metrics of that step
                log.log(step, {"eval/accuracy_flexible": final if step == 4 else EVALS[step],
                               "eval/accuracy_strict": 0.0, "eval/len": 25.0})
            if step in ROWS:
                acc, tokens = ROWS[step]
                log.log_samples(step, [{"id": f"arithmetic-eval-{i}", "question": q, "answer": a,
                                        "completion": f"#### {a}", "tokens": t, "accuracy_strict": 0.0,
                                        "accuracy_flexible": float(c), "format_rate": 1.0}
                                       for i, ((q, a), c, t) in enumerate(zip(PROBLEMS, acc, tokens))])
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_classifiers():
    assert [lr.operator(q) for q, _ in PROBLEMS] == ["+", "+", "-", "x"]
    assert lr.operator("Tom has 3 apples and 4 - 1 pears. How many fruits does he have?") == "other"
    assert [lr.answer_size(a) for a in ("7", "46", "-11", "408", "1,081", "0", "2.5", "n/a")] == \
        ["1d", "2d", "-2d", "3d", "4d", "1d", "1d", "?"]
    assert sorted(["3d", "-2d", "?", "1d", "-1d", "2d"], key=lr.size_key) == ["1d", "2d", "3d", "-1d", "-2d", "?"]


def test_report_tables(tmp_path):
    run = make_run(tmp_path / "grpo-arithmetic-run")
    assert lr.main([str(run)]) == 0
    out = run / "report"

    # step 0: + 1 of 2 (tokens (10+20)/2 = 15), - 0 of 1, x 0 of 1; step 4: + 2 of 2 (13), - 1 of 1, x 0 of 1 (60)
    by_op = [(r["step"], r["operator"], r["n"], r["correct"], float(r["accuracy"]), float(r["tokens"]))
             for r in read_csv(out / "eval_by_operator.csv")]
    assert by_op == [("0", "+", "2", "1", 0.5, 15.0), ("0", "-", "1", "0", 0.0, 30.0), ("0", "x", "1", "0", 0.0, 40.0),
                     ("4", "+", "2", "2", 1.0, 13.0), ("4", "-", "1", "1", 1.0, 30.0), ("4", "x", "1", "0", 0.0, 60.0)]
    # answers 46, 44 -> 2d; -11 -> -2d; 408 -> 3d
    by_size = [(r["step"], r["size"], r["n"], float(r["accuracy"])) for r in read_csv(out / "eval_by_answer_size.csv")]
    assert by_size == [("0", "-2d", "1", 0.0), ("0", "2d", "2", 0.5), ("0", "3d", "1", 0.0),
                       ("4", "-2d", "1", 1.0), ("4", "2d", "2", 1.0), ("4", "3d", "1", 0.0)]

    dyn = read_csv(out / "dynamics.csv")
    assert [r["step"] for r in dyn] == ["1", "2", "3", "4"]  # eval-only step 0 is not a train step
    # mixed = 1 - all_wrong - all_right: 1-.75-0, 1-.5-0, 1-.5-.25, 1-.25-.25
    assert [float(r["mixed"]) for r in dyn] == [0.25, 0.5, 0.25, 0.5]
    assert [float(r["entropy"]) for r in dyn] == [1.0, 0.8, 0.6, 0.4]
    assert [float(r["kl_base"]) for r in dyn] == [0.0, 0.01, 0.02, 0.03]
    assert [float(r["len"]) for r in dyn] == [100.0, 90.0, 80.0, 70.0]
    assert [(r["step"], float(r["eval/accuracy_flexible"])) for r in read_csv(out / "eval.csv")] == \
        [("0", 0.25), ("2", 0.75), ("4", 0.5)]

    md = (out / "report.md").read_text()
    assert "algo=grpo env=arithmetic reward=arithmetic lr=2e-05 group_size=8 prompts_per_step=4" in md
    assert "first 0.250, best 0.750 at step 2, final 0.500 at step 4 (0.250 below its best)" in md
    assert "| step | + | - | x |\n|---|---|---|---|\n| 0 | 0.500 (2) | 0.000 (1) | 0.000 (1) |" in md
    assert "| 4 | 1.000 (2) | 1.000 (1) | 0.000 (1) |" in md
    assert "| step | 2d | 3d | -2d |" in md
    assert "(eval.log_samples=4; set it to the eval size" in md
    assert "Not logged" not in md  # KL to base and the group fractions are both here
    for png in ("accuracy_by_operator.png", "accuracy_by_answer_size.png", "dynamics.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{png}]({png})" in md


def test_windows_average_consecutive_steps():
    rows = [{"step": s, "entropy": TRAIN[s][1], "len": TRAIN[s][6]} for s in TRAIN]
    # (1.0 + 0.8) / 2 = 0.9, (100 + 90) / 2 = 95; (0.6 + 0.4) / 2 = 0.5, (80 + 70) / 2 = 75
    assert lr.windows(rows, 2) == [{"steps": "1-2", "entropy": pytest.approx(0.9), "len": 95.0},
                                   {"steps": "3-4", "entropy": pytest.approx(0.5), "len": 75.0}]
    # a step that trained no row logs no entropy; its window still averages the steps that did
    del rows[2]["entropy"]
    assert lr.windows(rows, 2)[1] == {"steps": "3-4", "len": 75.0, "entropy": pytest.approx(0.4)}


def test_a_run_without_kl_or_group_metrics_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with MetricsLog(run, enabled=True) as log:
        log.log(0, {"eval/accuracy_strict": 0.1})
        log.log(1, {"reward/mean": 0.0, "policy/entropy_trained": 2.0})
    lr.main([str(run), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Not logged in this run: KL to the base model, group fractions" in md
    assert "No eval rows in samples.jsonl" in md
    assert "ends at its best" in md


def test_multirun_directory_gets_a_summary(tmp_path):
    sweep = tmp_path / "multirun" / "20261130-000000"
    make_run(sweep / "0-seed=0", final=0.5)
    make_run(sweep / "1-seed=1", final=0.8)
    assert lr.main([str(sweep), "--out", str(tmp_path / "rep")]) == 0
    rows = read_csv(tmp_path / "rep" / "summary.csv")
    assert [(r["run"], float(r["final"]), float(r["best"]), r["best_step"]) for r in rows] == \
        [("0-seed=0", 0.5, 0.75, "2"), ("1-seed=1", 0.8, 0.8, "4")]
    assert (tmp_path / "rep" / "1-seed=1" / "report.md").is_file()


def test_not_a_run_directory_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        lr.main([str(tmp_path)])
    assert "no metrics.jsonl here or in its subdirectories" in capsys.readouterr().err


def test_a_partial_last_line_is_skipped_and_a_repeated_eval_counted_once(tmp_path):
    run = make_run(tmp_path / "run")
    lines = (run / "samples.jsonl").read_text().splitlines()
    with open(run / "samples.jsonl", "a") as f:
        f.write("\n".join(lines[4:]) + "\n")  # a resume re-ran the step-4 eval: its 4 rows again
        f.write('{"step": 6, "question": "What is 1 + 2?", "ans')  # then killed mid-write
    rows = lr.read_samples(run)
    assert [r["step"] for r in rows] == [0, 0, 0, 0, 4, 4, 4, 4]
