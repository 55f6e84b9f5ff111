"""`rltool train hardware=gpu8`: re-launch this same command under `accelerate launch`, one process per rank.

The hardware profile decides the launch (process and machine counts, ZeRO stage, offload); the
accelerate config `zero3.yaml` supplies the rest and stays the file users edit. A command already
started by a launcher (accelerate, torchrun, SLURM via scripts/launch_slurm.sh) is never re-launched:
the launcher's world is the one that trains.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rltool.config import HardwareConfig


def launched() -> bool:
    """True inside a process a distributed launcher started (it sets RANK / LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def needs_launch(h: HardwareConfig) -> bool:
    return h.zero_stage == 3 and not launched()


def accelerate_config() -> str:
    """The top-level zero3.yaml of a checkout, or the copy shipped inside the package."""
    repo = Path(__file__).resolve().parent.parent / "zero3.yaml"
    return str(repo if repo.is_file() else Path(__file__).resolve().parent / "zero3.yaml")


def launch_command(h: HardwareConfig, args: list[str]) -> list[str]:
    """`accelerate launch ... -m rltool <args>` for this hardware profile (args: command + overrides)."""
    offload = lambda on: "cpu" if on else "none"  # noqa: E731
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config(),
            "--num_processes", str(h.num_processes), "--num_machines", str(h.num_machines),
            "--machine_rank", str(h.machine_rank), "--main_process_ip", h.main_process_ip,
            "--main_process_port", str(h.main_process_port),
            "--use_deepspeed", "--zero_stage", "3",
            "--offload_optimizer_device", offload(h.offload_optimizer),
            "--offload_param_device", offload(h.offload_param),
            "-m", "rltool", *args]


def launch_env(h: HardwareConfig) -> dict[str, str]:
    """DeepSpeed on CPU needs DS_ACCELERATOR=cpu (gloo); CPU ranks of one machine split its cores."""
    env = dict(os.environ)
    if h.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        per_machine = h.num_processes // h.num_machines
        threads = h.threads or max(1, (os.cpu_count() or 1) // per_machine)
        env["OMP_NUM_THREADS"] = str(threads)  # oversubscribed cores stall OpenMP (vLLM-CPU drops ~10x)
    return env


def run(h: HardwareConfig, args: list[str]) -> int:
    """Run `rltool <args>` on every rank of this machine through accelerate; returns its exit code."""
    import subprocess

    command = launch_command(h, args)
    print(f"rltool: launching {h.num_processes // h.num_machines} of {h.num_processes} ranks on machine "
          f"{h.machine_rank} of {h.num_machines} (DeepSpeed ZeRO-3): {' '.join(command[2:])}", file=sys.stderr, flush=True)
    return subprocess.call(command, env=launch_env(h))
