"""Each rank of a 2-rank ZeRO-3 run (gloo, CPU): a finite step, then a nan loss on rank 1 only, then a
finite step again; rank 0 writes what every rank saw as JSON. Run by test_faults.py.

    accelerate launch --config_file zero3.yaml tests/integration/nonfinite_worker.py OUT.json
"""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rltool import dist, train_backend
from rltool.config import HardwareConfig, TrainerConfig

IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])  # (B=1, T=6)


def main(out: str) -> None:
    cfg = SimpleNamespace(trainer=TrainerConfig(prompts_per_step=2, group_size=2, micro_batch_size=1, lr=1e-2),
                          hardware=HardwareConfig(name="t", num_processes=2, zero_stage=3))
    accelerator = train_backend.start(cfg)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64, vocab_size=128))
    optimizer = train_backend.make_optimizer(list(model.parameters()), cfg)
    model, optimizer = train_backend.prepare(accelerator, model, optimizer)

    def step(poison: float) -> dict:
        loss = model(input_ids=IDS, labels=IDS).loss * poison
        train_backend.backward(model, loss, last=True)
        norm = float(train_backend.step(model, optimizer, cfg.trainer.grad_clip))
        weights = train_backend.full_state_dict(model)  # collective; rank 0 keeps it
        return {"norm": norm, "skipped": train_backend.pop_skipped_nonfinite(), "weights": weights}

    first = step(1.0)
    poisoned = step(float("nan") if dist.rank() == 1 else 1.0)  # one rank's loss only
    after = step(1.0)
    seen = dist.all_gather_objects({"skipped": [first["skipped"], poisoned["skipped"], after["skipped"]]})
    if dist.rank() == 0:
        same = all(torch.equal(first["weights"][k], poisoned["weights"][k]) for k in first["weights"])
        moved = any(not torch.equal(poisoned["weights"][k], after["weights"][k]) for k in after["weights"])
        finite = all(bool(torch.isfinite(t).all()) for t in after["weights"].values())
        with open(out, "w") as f:
            json.dump({"skipped": [s["skipped"] for s in seen], "unchanged_by_poison": same, "moved_after": moved,
                       "finite": finite}, f)
    # Leave together and close the group: a rank that exited while the other still held gloo's connection
    # once aborted at interpreter exit ("terminate called without an active exception") after the JSON was written.
    # Under load it still did, once in a full suite: gloo's threads meet the interpreter's teardown. The results
    # are written and both ranks have left the group, so skip the teardown.
    dist.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
