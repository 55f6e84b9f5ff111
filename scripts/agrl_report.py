"""Held-out evidence of an AGRL run (or several seeds): does the learned reading order beat a random one?

    python scripts/agrl_report.py outputs/<run> [outputs/<run2> ...] --out docs/agrl_heldout.png

Reads each run's metrics.jsonl eval rows (eval/agrl/*) and writes, beside the PNG, a JSON with one
row per (run, eval step): mean value log-prob per token of the learned, random and article
orderings, learned - random with its standard error over held-out articles, and whether that
difference is above two standard errors (the bar for "the model learns to order its reading").
The PNG has two panels: the three orderings' value log-prob over steps, and learned - random with
+-2 SE bars (one line per run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDERINGS = {"learned": "eval/agrl/value_logp_learned", "random": "eval/agrl/value_logp_random",
             "article order": "eval/agrl/value_logp_article_order"}


def eval_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows if "eval/agrl/learned_minus_random" in r}  # a resume re-logs: last wins
    return [by_step[s] for s in sorted(by_step)]


def summary(run: Path) -> list[dict]:
    out = []
    for r in eval_rows(run):
        d, se = r["eval/agrl/learned_minus_random"], r["eval/agrl/learned_minus_random_se"]
        out.append({"run": run.name, "step": r["step"], **{k: r[v] for k, v in ORDERINGS.items()},
                    "learned_minus_random": d, "se": se, "above_2se": d > 2 * se,
                    "first_pick_root": r["eval/agrl/first_pick_root"], "articles": r["eval/agrl/articles"]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("agrl_heldout.png"))
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for run in args.runs for row in summary(run)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for run in args.runs:
        mine = [r for r in rows if r["run"] == run.name]
        steps = [r["step"] for r in mine]
        for name in ORDERINGS:
            top.plot(steps, [r[name] for r in mine], marker="o", label=f"{name} ({run.name})" if len(args.runs) > 1 else name)
        bottom.errorbar(steps, [r["learned_minus_random"] for r in mine], yerr=[2 * r["se"] for r in mine],
                        marker="o", capsize=3, label=run.name)
    top.set_ylabel("held-out value log-prob / token")
    top.legend(fontsize=7)
    bottom.axhline(0, color="grey", lw=0.8)
    bottom.set_ylabel("learned - random (+-2 SE)")
    bottom.set_xlabel("training step")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['run']} step {r['step']:4d}: learned {r['learned']:.3f} random {r['random']:.3f} "
              f"article {r['article order']:.3f} | learned-random {r['learned_minus_random']:+.3f} +- {r['se']:.3f} "
              f"{'(> 2 SE)' if r['above_2se'] else ''} | first pick root {r['first_pick_root']:.2f}")
    print(f"written: {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
