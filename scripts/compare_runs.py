"""Held-out accuracy of several runs against the generation tokens each had spent: a matched-budget
comparison (ERL spends tokens on reflections and retries, GRPO only on attempts).

    python scripts/compare_runs.py outputs/evidence/arith-grpo outputs/evidence/arith-erl \
        --metric eval/accuracy_flexible --out bench_results/arith_erl_vs_grpo

Writes <out>.json (per run: step, cumulative generated tokens, eval metrics at each eval) and
<out>.png (the metric against cumulative tokens), and prints a table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rltool.metrics import read_metrics


def eval_curve(run_dir: Path) -> list[dict]:
    """[{step, gen_tokens, eval/...}] at each eval; gen_tokens = generation tokens spent before that eval."""
    spent, curve = 0.0, []
    for row in read_metrics(run_dir / "metrics.jsonl"):
        evals = {k: v for k, v in row.items() if k.startswith("eval/")}
        if evals:
            curve.append({"step": row["step"], "gen_tokens": spent, **evals})
        spent += row.get("rollout/gen_tokens", row.get("rollout/tokens", 0.0))  # older runs: tokens == generated
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metric", default="eval/success",
                   help="an eval metric of metrics.jsonl (default: eval/success, the success rate on the run's reward)")
    p.add_argument("--out", default="bench_results/compare")
    args = p.parse_args()
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            p.error(f"{run}: no metrics.jsonl (expected a run directory, e.g. outputs/<run>)")

    curves = {str(r): eval_curve(r) for r in args.runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"metric": args.metric, "runs": curves}, indent=2) + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, curve in curves.items():
        ax.plot([c["gen_tokens"] / 1e3 for c in curve], [c.get(args.metric) for c in curve], marker="o",
                label=Path(name).name)
        print(f"\n{name}\n  step  gen_tokens  {args.metric}")
        for c in curve:
            print(f"  {c['step']:>4}  {c['gen_tokens']:>10,.0f}  {c.get(args.metric, float('nan')):.3f}")
    ax.set_xlabel("generated tokens (thousands)")
    ax.set_ylabel(args.metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
