"""Writes sums.jsonl: 600 two-digit additions in TRL's prompt format (a `prompt` and an `answer` column).

python examples/own_task/make_data.py   # the shipped sums.jsonl is its output (seed 0)
"""
import json
import pathlib
import random

rng = random.Random(0)
rows, seen = [], set()
while len(rows) < 600:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if (a, b) in seen:
        continue
    seen.add((a, b))
    rows.append({"prompt": f"What is {a} + {b}?", "answer": str(a + b)})
out = pathlib.Path(__file__).with_name("sums.jsonl")
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} rows to {out}")
