"""The chunked log-prob path under DeepSpeed ZeRO-3 (2 CPU ranks, gloo): the LM head is gathered by
ZeRO-3's own hooks, and its partitioned gradient equals the plain path's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rltool.launch import accelerate_config

pytestmark = pytest.mark.slow
WORKER = str(Path(__file__).with_name("zero3_logp_worker.py"))


def test_chunked_equals_plain_under_zero3(tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config(),
               "--num_processes", "2", "--main_process_port", "29521", WORKER, str(out)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    r = json.loads(out.read_text())
    assert r["deepspeed"] and r["chunked_active"]  # the chunked path ran, not the plain fallback
    assert_close(torch.tensor(r["chunked"]["logp"]), torch.tensor(r["plain"]["logp"]), atol=1e-5, rtol=1e-5)
    assert r["plain"]["head_grad_norm"] > 0 and r["head_grad"]["outside_tolerance"] == 0, r["head_grad"]
