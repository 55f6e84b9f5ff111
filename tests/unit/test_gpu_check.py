"""scripts/gpu_check.sh on a machine without a GPU: every CUDA check is skipped with its reason, the JSON
is written and the exit code is 0 (a GPU box runs the same script and gets pass/fail and numbers)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_without_a_gpu_skips_every_check_and_writes_its_json(tmp_path):
    assert not torch.cuda.is_available()
    env = os.environ | {"GPU_CHECK_OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["check"] for c in report["checks"]] == ["gpu1_collab_sleep", "qlora_step", "multi_lora_step",
                                                      "bench_memory", "bench_multiturn"]
    assert {c["status"] for c in report["checks"]} == {"skipped"}
    assert all(c["detail"] == "no CUDA device visible to torch" for c in report["checks"])
    assert report["versions"]["torch"] == torch.__version__
    assert "0 passed, 0 failed, 5 skipped" in proc.stdout
