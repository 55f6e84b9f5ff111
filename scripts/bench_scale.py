"""One process vs DeepSpeed ZeRO-3 ranks: the same training run under two hardware profiles.

    python scripts/bench_scale.py --steps 4                        # hardware=cpu vs hardware=cpu_zero3
    python scripts/bench_scale.py --profiles gpu1 gpu8 --extra actors=qwen2.5_0.5b_instruct

Each profile runs `rltool train` as a user would (a subprocess, the ZeRO-3 one re-launched under
accelerate) on the same config with a dense reward, so every step has gradient; the first step
(vLLM warm-up, compilation) is left out and the median of the rest is reported per phase: generate,
update, weight sync, whole step, generated tokens/s, peak memory per rank (resident set on CPU,
torch-allocated GPU memory on cuda: vLLM runs in-process), plus the wall time of the whole run.
Writes bench_results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = ["env=arithmetic", "reward=arithmetic", "reward.length_penalty=0.5", "trainer.prompts_per_step=4",
       "trainer.group_size=4", "trainer.micro_batch_size=4", "rollout.max_new_tokens=48", "eval.enabled=false",
       "trainer.save_every=0"]
PHASES = ["time/generate", "time/update", "time/sync", "time/step", "perf/tokens_per_s", "rollout/gen_tokens",
          "perf/peak_mem_gib"]


def run_profile(profile: str, steps: int, extra: list[str]) -> dict:
    from rltool.metrics import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "rltool", "train", f"hardware={profile}", *RUN, *extra,
                   f"trainer.max_steps={steps}", f"hydra.run.dir={tmp}/run"]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{profile}: rltool exited {proc.returncode}\n{proc.stderr[-3000:]}")
        rows = read_metrics(Path(tmp) / "run" / "metrics.jsonl")[1:]  # step 1 warms up vLLM
    return {"profile": profile, "steps_timed": len(rows), "wall_s": round(wall, 1),
            **{k: round(statistics.median(r[k] for r in rows), 3) for k in PHASES}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--profiles", nargs="+", default=["cpu", "cpu_zero3"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--extra", nargs="*", default=[])
    p.add_argument("--out", default="bench_results/scale.json")
    args = p.parse_args()
    result = {"config": RUN + args.extra, "steps": args.steps,
              "runs": [run_profile(profile, args.steps, args.extra) for profile in args.profiles]}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
