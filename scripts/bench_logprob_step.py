"""Step time of rltool's chunked log-prob path against the plain one (goal: <= 1.05x).

    .venv/bin/python scripts/bench_logprob_step.py [--repeats 2] [--steps 5]

Runs the rltool side of `bench_vs_trl.py` (same settings: arithmetic, 4 prompts x 4 completions of
exactly 64 tokens, float32 CPU, one warm-up step then `--steps` measured) with
`trainer.logprob_impl=plain` and `=chunked`, alternating (plain, chunked, plain, ...) so a drift
in the machine's load hits both; each run is its own process. Reports the median (min/max) step
and update-phase seconds of each path and the ratio chunked / plain of the medians, over every
measured step of every repeat. Writes bench_results/logprob_step.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench_vs_trl.py"
IMPLS = ("plain", "chunked")
GOAL = 1.05
WARMUP = 1  # bench_vs_trl's warm-up step
MIN_STEPS = 5  # and its minimum of measured steps


def run_side(impl: str, args) -> dict:
    """One rltool run (warm-up + measured steps) with the given log-prob path, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "part.json"
        subprocess.run([sys.executable, str(BENCH), "--steps", str(args.steps), "--logprob-impl", impl,
                        "--part", "rltool", "--part-out", str(out)], check=True)
        return json.loads(out.read_text())


def spread(values: list[float]) -> dict:
    return {"median_s": round(median(values), 3), "min_s": round(min(values), 3), "max_s": round(max(values), 3),
            "n": len(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="runs of each path, alternating plain / chunked")
    p.add_argument("--steps", type=int, default=5, help="measured steps per run, after one warm-up step")
    p.add_argument("--out", default="bench_results/logprob_step.json")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: must be >= 1")
    if args.steps < MIN_STEPS:
        p.error(f"--steps {args.steps}: at least {MIN_STEPS} measured steps per run (bench_vs_trl.py's minimum)")

    runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    for r in range(args.repeats):
        for impl in IMPLS:
            runs[impl].append(run_side(impl, args))
            load[f"after_{impl}_{r + 1}"] = [round(x, 2) for x in os.getloadavg()]

    def measured(impl: str, key) -> list[float]:
        return [key(s) for run in runs[impl] for s in run["steps"][WARMUP:]]

    step = {impl: spread(measured(impl, lambda s: s["seconds"])) for impl in IMPLS}
    update = {impl: spread(measured(impl, lambda s: s["phases_s"]["update"])) for impl in IMPLS}
    ratio = round(step["chunked"]["median_s"] / step["plain"]["median_s"], 3)
    result = {
        "bench": "logprob_step",
        "ratio_chunked_over_plain_step_median": ratio,
        "ratio_chunked_over_plain_update_median": round(update["chunked"]["median_s"] / update["plain"]["median_s"], 3),
        "step_s": step, "update_phase_s": update,
        "goal": f"chunked step <= {GOAL}x plain step", "meets_goal": ratio <= GOAL,
        "settings": {"as": "bench_vs_trl.py's rltool side", "steps_per_run": WARMUP + args.steps,
                     "repeats": args.repeats, "order": "plain, chunked alternating"},
        "runs": {impl: [run["steps"] for run in runs[impl]] for impl in IMPLS},
        "loadavg_1_5_15": load,
    }
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
