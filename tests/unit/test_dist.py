"""Two gloo ranks on loopback: group advantages and loss normalisers see every rank's samples."""
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from rltool import dist as rdist
from rltool.records import Sample, collate
from rltool.update import compute_advantages
from rltool.schemas import algo_config

# group 7 is split over the ranks (rank 0 holds two members, rank 1 one); group 9 lives on rank 1
REWARDS = [1.0, 0.0, 0.5, 2.0, 4.0]
GROUPS = [7, 7, 7, 9, 9]
RANK_ROWS = {0: [0, 1], 1: [2, 3, 4]}


def advantages(rows: list[int]) -> list[float]:
    samples = [Sample(prompt_ids=[1], completion_ids=[2], sample_logp=[0.0], group=GROUPS[i], reward=REWARDS[i])
               for i in rows]
    cfg = SimpleNamespace(algo=algo_config(name="t", advantage="dr_grpo"))
    compute_advantages(samples, collate(samples, pad_id=0), cfg)
    return [s.adv for s in samples]


def worker(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out[rank] = {"adv": advantages(RANK_ROWS[rank]), "tokens": rdist.sum_over_ranks(float(rank + 3)),
                     "world": rdist.world_size(), "max": rdist.max_over_ranks(rank + 3),
                     "dir": rdist.broadcast(f"outputs/run-{rank}"),
                     # rank 1 had no loss part (its micro-batches were padding)
                     "metrics": rdist.combine_metrics({"rollout/tokens": 10.0 * (rank + 1), "reward/mean": float(rank),
                                                       **({"loss/policy": 0.5} if rank == 0 else {})},
                                                      summed=("rollout/tokens",))}
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_group_split_over_two_ranks_matches_one_process():
    # dr_grpo: r - group mean. group 7 mean 0.5 -> [0.5, -0.5, 0]; group 9 mean 3 -> [-1, 1]
    assert_close(torch.tensor(advantages([0, 1, 2, 3, 4])), torch.tensor([0.5, -0.5, 0.0, -1.0, 1.0]))
    out = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), out), nprocs=2, join=True)
    assert out[0]["adv"] == [0.5, -0.5] and out[1]["adv"] == [0.0, -1.0, 1.0]
    assert out[0]["tokens"] == out[1]["tokens"] == 7.0  # 3 + 4
    assert out[0]["world"] == 2
    assert out[0]["max"] == out[1]["max"] == 4
    assert out[0]["dir"] == out[1]["dir"] == "outputs/run-0"
    assert out[0]["metrics"] == out[1]["metrics"] == {"rollout/tokens": 30.0, "reward/mean": 0.5, "loss/policy": 0.5}


def test_single_process_is_the_identity():
    x = torch.tensor([1.0, 2.0])
    assert rdist.gather_cat(x) == (x, 0) and rdist.sum_over_ranks(5.0) == 5.0 and rdist.world_size() == 1
    assert rdist.max_over_ranks(3) == 3 and rdist.broadcast("a") == "a" and rdist.combine_metrics({"k": 1.0}) == {"k": 1.0}
