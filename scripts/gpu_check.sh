#!/usr/bin/env bash
# The CUDA-only paths in one run (at most ~9 minutes on one GPU), one JSON of pass/fail and numbers:
#
#   bash scripts/gpu_check.sh                 # writes bench_results/gpu_check.json (or $GPU_CHECK_OUT)
#   GPU_CHECK_MODEL=/path/to/hf_dir bash scripts/gpu_check.sh   # another model (default: the embedded one)
#
# Checks, each under its own time limit so one hang cannot eat the others' time:
#   gpu1_collab_sleep  hardware=gpu1 env=collab_arithmetic, 2 steps, sleep mode on, the checker frozen:
#                      every engine must be awake when the next step generates (a frozen or silent actor too)
#   qlora_step         one QLoRA step (bitsandbytes 4-bit base + LoRA)
#   multi_lora_step    one rollout.multi_lora step: two LoRA actors served by one engine
#   bench_memory       scripts/bench_memory.py --device cuda (peak memory of the update phase)
#   bench_multiturn    scripts/bench_multiturn.py (multi-turn vs single-turn tokens/s)
# A check is "skipped" with its reason when what it needs is not installed (vllm, bitsandbytes) or no GPU
# is visible; the exit code is 1 when any check failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${GPU_CHECK_OUT:-bench_results}
MODEL=${GPU_CHECK_MODEL:-embedded:smollm2-135m-instruct}
WORK=$(mktemp -d)
mkdir -p "$OUT"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
export VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONUNBUFFERED=1

has() { "$PY" -c "import $1" >/dev/null 2>&1; }
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
record() {  # name status seconds detail [json file with numbers]
  "$PY" - "$@" >>"$RESULTS" <<'EOF'
import json, sys
name, status, seconds, detail = sys.argv[1:5]
numbers = json.load(open(sys.argv[5])) if len(sys.argv) > 5 and sys.argv[5] else {}
print(json.dumps({"check": name, "status": status, "seconds": float(seconds), "detail": detail[-2000:],
                  "numbers": numbers}))
EOF
}
# run_check NAME LIMIT_S NEEDS... -- COMMAND...: runs COMMAND under LIMIT_S, records pass/fail/skipped
run_check() {
  local name=$1 limit=$2; shift 2
  local needs=()
  while [ "$1" != "--" ]; do needs+=("$1"); shift; done; shift
  if [ "$CUDA" != 1 ]; then record "$name" skipped 0 "no CUDA device visible to torch"; return; fi
  for m in "${needs[@]}"; do
    has "$m" || { record "$name" skipped 0 "python module '$m' is not installed (pip install -e .[gpu])"; return; }
  done
  local log="$WORK/$name.log" start end status
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  end=$(date +%s%N)
  case $rc in 0) status=pass ;; 124|137) status=fail; echo "timed out after ${limit}s" >>"$log" ;; *) status=fail ;; esac
  cp "$log" "$OUT/gpu_check_$name.log" 2>/dev/null
  record "$name" "$status" "$(awk "BEGIN {print ($end - $start) / 1e9}")" "$(tail -c 2000 "$log")" "${NUMBERS:-}"
}

# check_run RUN_DIR STEPS: the run logged STEPS train steps with finite numbers; prints its per-step numbers
check_run() {
  "$PY" - "$1" "$2" <<'EOF'
import json, math, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines() if l.strip()]
steps = [r for r in rows if "time/step" in r]
assert len(steps) == int(sys.argv[2]), f"{len(steps)} train steps logged, expected {sys.argv[2]}"
bad = {k: v for r in steps for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
assert not bad, f"non-finite metrics: {bad}"
print(json.dumps({k: v for k, v in steps[-1].items() if k.startswith(("time/", "perf/", "loss/", "reward/"))}))
EOF
}
export -f check_run
export PY

TINY=(rollout.timeout_s=120 trainer.prompts_per_step=2 trainer.group_size=2 trainer.micro_batch_size=4 rollout.max_new_tokens=32
      eval.enabled=false trainer.save_every=0 rollout.enforce_eager=true)

NUMBERS="$WORK/collab.json" run_check gpu1_collab_sleep 180 vllm -- bash -c "
  $PY -m rltool train hardware=gpu1 hardware.sleep_mode=true env=collab_arithmetic \
    actors.solver.path=$MODEL actors.checker.path=$MODEL actors.checker.trainable=false \
    trainer.max_steps=2 ${TINY[*]} hydra.run.dir=$WORK/collab &&
  check_run $WORK/collab 2 > $WORK/collab.json"

NUMBERS="$WORK/qlora.json" run_check qlora_step 120 vllm bitsandbytes peft -- bash -c "
  $PY -m rltool train hardware=gpu1 actors.path=$MODEL actors.qlora=true actors.lora.r=16 env=arithmetic \
    reward=arithmetic trainer.max_steps=1 ${TINY[*]} hydra.run.dir=$WORK/qlora &&
  check_run $WORK/qlora 1 > $WORK/qlora.json"

NUMBERS="$WORK/multi_lora.json" run_check multi_lora_step 120 vllm peft -- bash -c "
  $PY -m rltool train hardware=gpu1 env=collab_arithmetic rollout.multi_lora=true \
    actors.solver.path=$MODEL actors.checker.path=$MODEL actors.solver.lora.r=8 actors.checker.lora.r=8 \
    trainer.max_steps=1 ${TINY[*]} hydra.run.dir=$WORK/multi_lora &&
  check_run $WORK/multi_lora 1 > $WORK/multi_lora.json"

NUMBERS="$OUT/gpu_check_memory.json" run_check bench_memory 90 -- \
  "$PY" scripts/bench_memory.py --device cuda --model "$MODEL" --skip-fit --out "$OUT/gpu_check_memory.json"

NUMBERS="$OUT/gpu_check_multiturn.json" run_check bench_multiturn 150 vllm -- \
  "$PY" scripts/bench_multiturn.py --repeats 2 --enforce-eager --out "$OUT/gpu_check_multiturn.json"

"$PY" - "$RESULTS" "$OUT/gpu_check.json" <<'EOF'
import json, subprocess, sys
checks = [json.loads(line) for line in open(sys.argv[1])]
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    gpu = ""
versions = {}
for m in ("torch", "vllm", "deepspeed", "bitsandbytes", "peft", "transformers"):
    try:
        versions[m] = __import__(m).__version__
    except Exception:
        versions[m] = None
report = {"gpu": gpu or None, "versions": versions, "passed": sum(c["status"] == "pass" for c in checks),
          "failed": sum(c["status"] == "fail" for c in checks), "skipped": sum(c["status"] == "skipped" for c in checks),
          "checks": checks}
json.dump(report, open(sys.argv[2], "w"), indent=1)
for c in checks:
    print(f"{c['check']:18s} {c['status']:8s} {c['seconds']:7.1f} s  {c['detail'].strip().splitlines()[-1] if c['detail'].strip() else ''}")
print(f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped -> {sys.argv[2]}")
sys.exit(1 if report["failed"] else 0)
EOF
rc=$?
rm -rf "$WORK"
exit $rc
