"""Run the real CLI in a subprocess, as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RLTOOL = [sys.executable, "-m", "rltool.cli"]
# Small but real: the embedded model, real vLLM, real optimizer steps. The length penalty makes
# rewards differ within every group, so each step has a non-zero gradient even when no answer is right.
TINY = ["env=arithmetic", "reward=arithmetic", "reward.length_penalty=0.5", "trainer.prompts_per_step=2", "trainer.group_size=4", "trainer.micro_batch_size=4",
        "rollout.max_new_tokens=24", "eval.max_new_tokens=24", "eval.size=8", "hardware=cpu",
        "rollout.enforce_eager=true",  # vLLM starts in seconds instead of ~90 s of torch.compile
        # env=arithmetic brings its tuned run (cosine lr 1e-5, evals every 10, one DAPO refill); these
        # tests check the loop's mechanics on the base config's values, so they state them
        "trainer.lr=2e-6", "trainer.lr_schedule=constant", "trainer.eval_every=25", "trainer.save_every=25",
        "algo.max_refill_rounds=2"]

# A conversation reward (a `reward.module` file): each actor is scored on its own words. The sampled texts
# differ, so every group has a spread of rewards and every actor gets gradients even when no answer is right.
OWN_VARIETY_REWARD = '''
from rltool.rewards import reward

@reward("own_variety")
def own_variety(completion, conversation, actor):
    own = " ".join(t["content"] for t in conversation if t["actor"] == actor)
    return (len(set(own.split())) % 5) / 4
'''


def rltool(*args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*RLTOOL, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"rltool {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_step(rows: list[dict], key: str) -> dict[int, object]:
    """Last value per step (a resumed run re-logs the steps after its checkpoint)."""
    return {r["step"]: r[key] for r in rows if key in r}
