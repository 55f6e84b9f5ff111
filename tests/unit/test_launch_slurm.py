"""scripts/launch_slurm.sh with stand-ins for srun/scontrol/accelerate: the accelerate command each
machine runs (machine rank from SLURM, head node as rendezvous, overrides passed through intact)."""
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "launch_slurm.sh"


def stub(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
    (bin_dir / name).chmod(0o755)


def test_each_machine_launches_its_share(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "scontrol", 'printf "gpu-node-7\\ngpu-node-8\\n"\n')
    # srun: run the task once per machine, as SLURM would on each node
    stub(bin_dir, "srun", 'while [[ $1 == --* ]]; do shift; done\n'
                          'for n in 0 1; do SLURM_NODEID=$n "$@"; done\n')
    stub(bin_dir, "fake-accelerate", f'echo "$@" > {tmp_path}/machine-$SLURM_NODEID.txt\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-node-[7-8]",
               SLURM_NNODES="2", SLURM_JOB_ID="123", SLURM_GPUS_ON_NODE="4", ACCELERATE="fake-accelerate")
    subprocess.run(["bash", str(SCRIPT), "algo=grpo", "trainer.prompts_per_step=64"], env=env, check=True, timeout=30)
    for rank in (0, 1):
        args = (tmp_path / f"machine-{rank}.txt").read_text().split()
        value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
        assert args[0] == "launch" and value("--config_file").endswith("zero3.yaml")
        assert (value("--num_machines"), value("--machine_rank"), value("--num_processes")) == ("2", str(rank), "8")
        assert (value("--main_process_ip"), value("--main_process_port")) == ("gpu-node-7", "29500")
        assert args[args.index("-m"):] == ["-m", "rltool", "train", "hardware=multinode", "hardware.num_machines=2",
                                           "hydra.run.dir=outputs/slurm-123", "algo=grpo", "trainer.prompts_per_step=64"]
