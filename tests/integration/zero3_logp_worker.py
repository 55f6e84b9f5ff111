"""Chunked vs plain log-probs under DeepSpeed ZeRO-3 on 2 CPU ranks (gloo), run by test_zero3_logp.py.

    accelerate launch --config_file zero3.yaml --num_processes 2 tests/integration/zero3_logp_worker.py OUT.json

Each rank holds its own 2 rows of the embedded model's inputs. For each path, logp and logp at
temperature 1 (temperature 0.7, chunks of 4 tokens) go through a backward, and the full gradient of the
partitioned LM head (tied: the embedding) is gathered (`safe_get_full_grad`) and compared. Rank 0 writes the JSON.
"""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

from rltool import dist, train_backend  # noqa: E402
from rltool.actors.chunked_logp import lm_head  # noqa: E402
from rltool.actors.embedded import materialize  # noqa: E402
from rltool.actors.load import load_policy  # noqa: E402
from rltool.actors.logprobs import completion_logp  # noqa: E402
from rltool.config import ActorConfig, HardwareConfig, RolloutConfig, TrainerConfig  # noqa: E402
from rltool.schemas import algo_config


def main(out: str) -> None:
    from deepspeed.utils import safe_get_full_grad

    cfg = SimpleNamespace(algo=algo_config(name="t"), rollout=RolloutConfig(max_new_tokens=8),
                          trainer=TrainerConfig(prompts_per_step=2, group_size=2, micro_batch_size=2),
                          hardware=HardwareConfig(name="t", num_processes=2, zero_stage=3))
    accelerator = train_backend.start(cfg)
    path = str(materialize())
    model = load_policy(ActorConfig(path=path), "float32", base_dir=path, device=None)
    optimizer = train_backend.make_optimizer(list(model.parameters()), cfg)
    model, optimizer = train_backend.prepare(accelerator, model, optimizer)
    g = torch.Generator().manual_seed(dist.rank())
    ids = torch.randint(0, 49152, (2, 12), generator=g)  # (B, P+T) = (2, 6+6), this rank's rows
    w = torch.randn(2, 6, generator=g)  # (B, T)
    head = train_backend.unwrap(model).lm_head.weight  # partitioned under ZeRO-3
    result = {"deepspeed": train_backend.is_deepspeed(model), "chunked_active": lm_head(model) is not None}
    grads = {}
    for impl in ("plain", "chunked"):
        out_ = completion_logp(model, ids, torch.ones_like(ids), 6, 0.7, with_entropy=True, with_t1=True, impl=impl,
                               chunk_size=4)
        model.set_gradient_accumulation_boundary(True)
        model.backward((out_.logp * w).sum() + 0.5 * (out_.logp_t1 * w).sum())
        grads[impl] = safe_get_full_grad(head).clone()  # (V, H), collective: gathered from the ranks' partitions
        result[impl] = {"logp": dist.gather_cat(out_.logp.detach().flatten())[0].tolist(), "head_grad_norm": float(grads[impl].norm())}
        model.optimizer.zero_grad()
    # Elementwise |chunked - plain| <= 1e-5 * (max|plain| + |plain|): 1e-5 of the gradient's scale. On random
    # tokens the tied head's gradient reaches ~100 (its input-token rows carry the 30-layer backward), where fp32
    # summation order alone moves elements by ~1e-4 on either path (the plain path's own error against a float64
    # forward is of that size). The (V, H) gradient is too big for the JSON: the comparison is made here.
    diff, plain = (grads["chunked"] - grads["plain"]).abs(), grads["plain"].abs()
    result["head_grad"] = {"max_abs_diff": float(diff.max()), "max_abs": float(plain.max()),
                           "outside_tolerance": int((diff > 1e-5 * (plain.max() + plain)).sum())}
    if dist.rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
