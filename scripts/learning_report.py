"""Why did a run learn (or stop learning)? Tables and curves from what the run logged.

    python scripts/learning_report.py outputs/<run>              # writes outputs/<run>/report/
    python scripts/learning_report.py outputs/<run> --out DIR
    python scripts/learning_report.py multirun/<time>            # every job, plus summary.md/.csv

Reads the run directory as rltool writes it: metrics.jsonl (train steps and evals), samples.jsonl
(eval rows: question, answer, accuracy_*, tokens), config.yaml (which accuracy is the success).
Writes, to DIR:

    report.md                  every table below, with the PNGs
    eval.csv                   step, eval/* (final vs best: does the run end better than it peaks?)
    eval_by_operator.csv       step, operator (+, -, x; "other" otherwise), n, correct, accuracy, format_rate, tokens
    eval_by_answer_size.csv    step, answer size (digits of |answer|, "-2d" = negative, 2 digits), n, ...
    dynamics.csv               per train step: reward, success, entropy, KL to the base model, KL to the
                               sampling policy, all-wrong / all-right / mixed / no-signal groups, length
    accuracy_by_operator.png  accuracy_by_answer_size.png  dynamics.png

Limits:
- Per-operator and per-size accuracy is over the eval rows samples.jsonl holds, and the loop logs only
  the first `eval.log_samples` (default 3) of rank 0's share: run with eval.log_samples=1000 (>= the
  eval size) to log every held-out problem. The report says how many rows each eval had.
- KL to the base model (policy/ref_kl) is logged only when a reference model is loaded: with
  trainer.ref_kl_rows=N (measured on N rows a step, training unchanged) or algo.kl_coef > 0 (a KL term,
  which puts every row through the update).
- Group fractions need rollout/groups_* (rltool/algos/group_stats.py); runs without them get none.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from rltool.metrics import read_metrics

SUCCESS_TO_ROW = {"gsm8k_strict": "accuracy_strict", "gsm8k_flexible": "accuracy_flexible",
                  "math_verify": "accuracy_math_verify"}
"""reward.success -> the eval row's accuracy column (rltool/evaluate.py's ACCURACY, inverted)."""
OPERATION = re.compile(r"\d\s*([-+*x×/])\s*-?\d+\s*\?\s*$")
"""'a op b?' closing the question, as env=arithmetic writes it ('What is 47 * 23?'); GSM8K's never do."""
OPERATORS = {"+": "+", "-": "-", "*": "x", "x": "x", "×": "x", "/": "/"}
DYNAMICS = [  # (column, metric key): only those present in the run are reported
    ("reward", "reward/mean"), ("success", "reward/success"), ("entropy", "policy/entropy_trained"),
    ("kl_base", "policy/ref_kl"), ("kl_loss", "loss/kl"), ("kl_old", "policy/approx_kl"),
    ("all_wrong", "rollout/groups_all_wrong"), ("all_right", "rollout/groups_all_right"),
    ("no_signal", "rollout/groups_no_signal"), ("len", "rollout/len"), ("truncated", "rollout/truncated"),
]
WINDOWS = 10
"""report.md averages the train steps into at most this many windows; dynamics.csv has every step."""


# ---- reading ----

def read_config(run: Path) -> dict:
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def read_samples(run: Path) -> list[dict]:
    path = run / "samples.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:  # a run killed mid-write leaves a partial last line: skip it, as read_metrics does
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    # a resumed run re-runs the eval of its resume step: the later rows of a (step, problem) win
    return list({(r["step"], r.get("id", i)): r for i, r in enumerate(rows)}.values())


def accuracy_column(config: dict, rows: list[dict]) -> str:
    """The eval row column that matches the run's success reward (accuracy_strict when unknown)."""
    column = SUCCESS_TO_ROW.get((config.get("reward") or {}).get("success"), "accuracy_strict")
    return column if not rows or column in rows[0] else next((k for k in SUCCESS_TO_ROW.values() if k in rows[0]), column)


def operator(question: str) -> str:
    """'+', '-', 'x' or '/' for 'What is 47 * 23?'; 'other' when the question does not end in 'a op b?'."""
    m = OPERATION.search(question)
    return OPERATORS[m.group(1)] if m else "other"


def answer_size(answer: str) -> str:
    """'3d' for 123, '-2d' for -45 (digits of the integer part), '?' when the answer is not a number."""
    m = re.fullmatch(r"\s*(-?)\$?([\d,]+)(?:\.\d+)?\s*", str(answer))
    if not m:
        return "?"
    return f"{m.group(1)}{len(m.group(2).replace(',', '').lstrip('0') or '0')}d"


def size_key(label: str) -> tuple:
    return (label == "?", label.startswith("-"), int(label.strip("-d")) if label != "?" else 0)


# ---- tables ----

def breakdown(rows: list[dict], key, column: str) -> list[dict]:
    """[{step, group, n, correct, accuracy, format_rate, tokens}] per eval step and group (key(row) -> label)."""
    cells: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        if column in r:
            cells.setdefault((r["step"], key(r)), []).append(r)
    out = []
    for (step, group), rs in sorted(cells.items()):
        correct = sum(float(r[column]) > 0 for r in rs)
        tokens = [r["tokens"] for r in rs if "tokens" in r]
        fmt_ok = [r["format_rate"] for r in rs if "format_rate" in r]
        out.append({"step": step, "group": group, "n": len(rs), "correct": correct, "accuracy": correct / len(rs),
                    "format_rate": sum(fmt_ok) / len(fmt_ok) if fmt_ok else "",
                    "tokens": sum(tokens) / len(tokens) if tokens else ""})
    return out


def dynamics(metrics: list[dict]) -> list[dict]:
    """One row per train step (a step with reward/mean), the DYNAMICS keys it has, plus mixed groups."""
    present = [(col, key) for col, key in DYNAMICS if any(key in m for m in metrics)]
    out = []
    for m in metrics:
        if "reward/mean" not in m:
            continue
        row = {"step": m["step"], **{col: m[key] for col, key in present if key in m}}
        if "all_wrong" in row and "all_right" in row:
            row["mixed"] = 1.0 - row["all_wrong"] - row["all_right"]
        out.append(row)
    return out


def windows(rows: list[dict], n: int = WINDOWS) -> list[dict]:
    """Means over consecutive runs of rows, at most n of them; 'steps' names each window 'a-b'."""
    if not rows:
        return []
    size = -(-len(rows) // n)
    out = []
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        cols = [c for c in dict.fromkeys(k for r in chunk for k in r) if c != "step"]  # a step may lack some (entropy)
        mean = {c: sum(r[c] for r in chunk if c in r) / max(sum(c in r for r in chunk), 1) for c in cols}
        out.append({"steps": f"{chunk[0]['step']}-{chunk[-1]['step']}", **mean})
    return out


def evals(metrics: list[dict]) -> list[dict]:
    return [{"step": m["step"], **{k: v for k, v in m.items() if k.startswith("eval/")}}
            for m in metrics if any(k.startswith("eval/") for k in m)]


def final_vs_best(eval_rows: list[dict], key: str) -> dict:
    points = [(r["step"], r[key]) for r in eval_rows if key in r]
    if not points:
        return {}
    best = max(points, key=lambda p: (p[1], -p[0]))  # the earliest step reaching the best value
    return {"metric": key, "first": points[0][1], "final": points[-1][1], "final_step": points[-1][0],
            "best": best[1], "best_step": best[0]}


# ---- writing ----

def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def renamed(cells: list[dict], name: str) -> list[dict]:
    """Breakdown rows with their 'group' column called `name`, second after step."""
    return [{"step": c["step"], name: c["group"], **{k: v for k, v in c.items() if k not in ("step", "group")}}
            for c in cells]


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def wide(cells: list[dict], order) -> list[dict]:
    """Long breakdown rows -> one row per step, a column per group: 'accuracy (n)'."""
    groups = sorted({c["group"] for c in cells}, key=order)
    by_step: dict[int, dict] = {}
    for c in cells:
        by_step.setdefault(c["step"], {"step": c["step"]})[c["group"]] = f"{c['accuracy']:.3f} ({c['n']})"
    return [{"step": s, **{g: row.get(g, "") for g in groups}} for s, row in sorted(by_step.items())]


def plot_breakdown(path: Path, cells: list[dict], order, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for g in sorted({c["group"] for c in cells}, key=order):
        points = [(c["step"], c["accuracy"]) for c in cells if c["group"] == g]
        n = max(c["n"] for c in cells if c["group"] == g)
        ax.plot(*zip(*points), marker="o", label=f"{g} (n<={n})")
    ax.set(title=title, xlabel="step", ylabel="held-out accuracy", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)


def plot_dynamics(path: Path, dyn: list[dict], eval_rows: list[dict], acc_key: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("reward and accuracy", [("success", "train success"), ("reward", "train reward")]),
              ("entropy (trained rows)", [("entropy", "entropy")]),
              ("KL", [("kl_base", "KL to base (k3)"), ("kl_loss", "KL loss term"), ("kl_old", "KL to sampler (approx)")]),
              ("groups", [("all_wrong", "all wrong"), ("all_right", "all right"), ("mixed", "mixed"),
                          ("no_signal", "no signal (equal rewards)")]),
              ("completion length", [("len", "rollout/len (tokens)")])]
    have = {k for r in dyn for k in r}
    panels = [(t, [(k, lbl) for k, lbl in keys if k in have]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys or t == "reward and accuracy"]
    fig = Figure(figsize=(8, 2.3 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, keys) in zip(axes, panels):
        for k, label in keys:
            ax.plot([r["step"] for r in dyn if k in r], [r[k] for r in dyn if k in r], label=label)
        if title == "reward and accuracy":
            points = [(r["step"], r[acc_key]) for r in eval_rows if acc_key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=acc_key)
        if title == "completion length" and any("eval/len" in r for r in eval_rows):
            ax.plot(*zip(*[(r["step"], r["eval/len"]) for r in eval_rows if "eval/len" in r]), marker="o", label="eval/len")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step")
    fig.savefig(path, dpi=100)


def report(run: Path, out: Path) -> dict:
    """Write every table and PNG for one run directory to `out`; returns the headline (final vs best)."""
    metrics = read_metrics(run / "metrics.jsonl")
    config, samples = read_config(run), read_samples(run)
    rows = [r for r in samples if "question" in r and "answer" in r]  # eval rows
    column = accuracy_column(config, rows)
    out.mkdir(parents=True, exist_ok=True)

    eval_rows, dyn = evals(metrics), dynamics(metrics)
    acc_key = f"eval/{column}"
    head = final_vs_best(eval_rows, acc_key)
    by_op = breakdown(rows, lambda r: operator(r["question"]), column)
    by_size = breakdown(rows, lambda r: answer_size(r["answer"]), column)
    op_order = lambda g: ("+", "-", "x", "/", "other").index(g)  # noqa: E731
    write_csv(out / "eval.csv", eval_rows)
    write_csv(out / "eval_by_operator.csv", renamed(by_op, "operator"))
    write_csv(out / "eval_by_answer_size.csv", renamed(by_size, "size"))
    write_csv(out / "dynamics.csv", dyn)
    pngs = []
    arithmetic = any(c["group"] != "other" for c in by_op)
    if by_op:
        if arithmetic:
            plot_breakdown(out / "accuracy_by_operator.png", by_op, op_order, f"{column} by operator")
            pngs.append("accuracy_by_operator.png")
        plot_breakdown(out / "accuracy_by_answer_size.png", by_size, size_key, f"{column} by answer size")
        pngs.append("accuracy_by_answer_size.png")
    plot_dynamics(out / "dynamics.png", dyn, eval_rows, acc_key)
    pngs.append("dynamics.png")

    md = [f"# Learning report: {run.name}", ""]
    settings = [f"{k}={v}" for k, v in (("algo", (config.get("algo") or {}).get("name")),
                                         ("env", (config.get("env") or {}).get("name")),
                                         ("reward", (config.get("reward") or {}).get("name")),
                                         ("lr", (config.get("trainer") or {}).get("lr")),
                                         ("group_size", (config.get("trainer") or {}).get("group_size")),
                                         ("prompts_per_step", (config.get("trainer") or {}).get("prompts_per_step")),
                                         ("temperature", (config.get("rollout") or {}).get("temperature")),
                                         ("kl_coef", (config.get("algo") or {}).get("kl_coef"))) if v is not None]
    if settings:
        md += [" ".join(settings), ""]
    if head:
        gap = head["best"] - head["final"]
        md += [f"**{acc_key}**: first {head['first']:.3f}, best {head['best']:.3f} at step {head['best_step']}, "
               f"final {head['final']:.3f} at step {head['final_step']} "
               f"({'ends at its best' if gap <= 0 else f'{gap:.3f} below its best'})", ""]
    md += ["## Held-out evaluation", "", markdown(eval_rows) if eval_rows else "no eval logged", ""]
    if rows:
        n_max = max(c["n"] for c in breakdown(rows, lambda r: "all", column))
        logged = (config.get("eval") or {}).get("log_samples")
        md += [f"Per-group accuracy ({column}) over the eval rows in samples.jsonl: at most {n_max} a step"
               + (f" (eval.log_samples={logged}; set it to the eval size to log every problem)" if logged == n_max else "")
               + ". Cells: accuracy (n).", ""]
        if arithmetic:
            md += ["### By operator", "", markdown(wide(by_op, op_order)), ""]
        md += ["### By answer size (digits of |answer|; -2d = negative, 2 digits)", "",
               markdown(wide(by_size, size_key)), ""]
    else:
        md += ["No eval rows in samples.jsonl: no per-operator or per-size tables.", ""]
    md += ["## Training dynamics (means over windows of steps; every step in dynamics.csv)", ""]
    md += [markdown(windows(dyn)) if dyn else "no train steps logged", ""]
    missing = [name for name, key in (("KL to the base model", "kl_base"), ("group fractions", "all_wrong"))
               if not any(key in r for r in dyn)]
    if missing:
        md += [f"Not logged in this run: {', '.join(missing)} (KL to the base model: run with trainer.ref_kl_rows=8; "
               "see the limits in scripts/learning_report.py).", ""]
    md += [f"![{p}]({p})" for p in pngs] + [""]
    (out / "report.md").write_text("\n".join(md))
    return {"run": run.name, **head}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run directory (outputs/<run>) or a multirun directory")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/report")
    args = p.parse_args(argv)
    out = args.out or args.run / "report"
    if (args.run / "metrics.jsonl").is_file():
        report(args.run, out)
        print(f"written: {out / 'report.md'}")
        return 0
    jobs = sorted(d for d in args.run.iterdir() if (d / "metrics.jsonl").is_file()) if args.run.is_dir() else []
    if not jobs:
        p.error(f"{args.run}: no metrics.jsonl here or in its subdirectories (expected outputs/<run> or multirun/<time>)")
    summary = [report(job, out / job.name) for job in jobs]
    write_csv(out / "summary.csv", summary)
    (out / "summary.md").write_text("# Learning report: " + args.run.name + "\n\n" + markdown(summary) + "\n\n"
                                    + "\n".join(f"- [{j.name}]({j.name}/report.md)" for j in jobs) + "\n")
    print(f"written: {out / 'summary.md'} and {len(jobs)} job reports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
