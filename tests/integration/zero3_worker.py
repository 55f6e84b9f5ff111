"""One optimizer step on a fixed batch of the embedded model, run by test_zero3.py.

Either as one plain process, or as each rank of `accelerate launch --config_file zero3.yaml` (ZeRO-3 on
gloo). Ranks hold every other sample, so each GRPO group is split over the ranks; the plain process holds
them in rank order, so bnpo's micro-batches (its mean depends on the split) are the same rows. Each
aggregation (grpo, bnpo, dr_grpo) is first measured with lr 0 (loss and gradient norm, weights kept),
then dapo takes the real step; mismatch correction is on (engine log-probs differ from the trainer's). With --engine, every
rank also starts its own vLLM engine (external_launcher), and after the step the trainer's weights are
pushed in block by block and vLLM's log-probs are compared with the trainer's. Rank 0 writes a JSON.

    python tests/integration/zero3_worker.py OUT.json [--engine] [--lora]
"""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

from rltool import dist, train_backend  # noqa: E402
from rltool.actors.embedded import materialize  # noqa: E402
from rltool.actors.load import load_policy, load_tokenizer  # noqa: E402
from rltool.actors.logprobs import completion_logp  # noqa: E402
from rltool.records import Sample, collate
from rltool.config import ActorConfig, HardwareConfig, LoraConfig, RolloutConfig, TrainerConfig  # noqa: E402
from rltool.engines.prompts import encode_chat  # noqa: E402
from rltool.update import compute_advantages, optimize  # noqa: E402
from rltool.schemas import algo_config

QUESTIONS = ["What is 17 + 25?", "What is 9 x 7?"]
ANSWERS = [" 42", " The answer is 42.", " 17 + 25 = 42", " I think it is 41 or so.",
           " 63", " 9 x 7 = 63, so the answer is 63.", " 56", " Sixty-three."]
REWARDS = [1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.0]


AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")  # the last one steps
RANK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def fixed_samples(tokenizer) -> list[Sample]:
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": q}], 128) for q in QUESTIONS]
    completions = [tokenizer.encode(a, add_special_tokens=False) for a in ANSWERS]
    # engine log-probs of -3: TIS weights min(pi_old / e^-3, 2) vary by token, some truncated at the cap
    return [Sample(prompt_ids=prompts[i // 4], completion_ids=c, sample_logp=[-3.0] * len(c), group=i // 4, reward=r)
            for i, (c, r) in enumerate(zip(completions, REWARDS))]


def trainer_logp(model, sample: Sample) -> list[float]:
    batch = collate([sample], pad_id=0)
    with torch.no_grad():
        return completion_logp(model, batch.input_ids, batch.attention_mask, batch.prompt_width).logp[0].tolist()


def set_lr(optimizer, lr: float) -> None:
    """lr 0 measures an aggregation's gradient without moving the weights (weight decay is 0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def main(out: str, with_engine: bool, lora_r: int) -> None:
    cfg = SimpleNamespace(
        algo=algo_config(name="t", advantage="grpo", agg="dapo", mismatch_level="token"),
        trainer=TrainerConfig(prompts_per_step=2, group_size=4, micro_batch_size=2, lr=1e-3 if lora_r else 1e-4,
                              grad_clip=1.0),
        rollout=RolloutConfig(max_new_tokens=16), hardware=HardwareConfig(name="t", num_processes=2, zero_stage=3))
    accelerator = train_backend.start(cfg)  # None in a plain process
    path = str(materialize())
    tokenizer = load_tokenizer(path)
    model = load_policy(ActorConfig(path=path, lora=LoraConfig(r=lora_r)), "float32", base_dir=path, device=None if accelerator else "cpu")
    optimizer = train_backend.make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    model, optimizer = train_backend.prepare(accelerator, model, optimizer)

    samples = fixed_samples(tokenizer)
    probe = samples[1]
    # every group has members on both ranks; one process holds them in the ranks' order
    mine = samples[dist.rank()::2] if dist.world_size() > 1 else [samples[i] for i in RANK_ORDER]
    batch = collate(mine, tokenizer.pad_token_id)
    compute_advantages(mine, batch, cfg)
    engine = None
    if with_engine:
        from rltool.engines import sync_weights
        from rltool.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(path, dtype="float32", device="cpu", seed=0, max_model_len=256, kv_cache_gib=1,
                            max_num_seqs=8, external_launcher=dist.world_size() > 1,
                            enforce_eager=True)  # no ~90 s torch.compile per rank
        before = engine.prompt_logprobs(probe.prompt_ids, probe.completion_ids)

    result = {"world": dist.world_size(), "deepspeed": train_backend.is_deepspeed(model),
              "advantages": dist.gather_cat(torch.tensor([s.adv for s in mine]))[0].tolist()}
    lr = cfg.trainer.lr
    for agg in AGGREGATIONS:
        set_lr(optimizer, lr if agg == AGGREGATIONS[-1] else 0.0)
        cfg.algo.agg = agg
        metrics = optimize(model, optimizer, batch, cfg)
        result[agg] = {"loss": dist.sum_over_ranks(float(metrics["loss/policy"])),
                       "grad_norm": float(metrics["policy/grad_norm"])}
    result["logp_after"] = trainer_logp(model, probe)
    if engine is not None:
        sync_weights(engine, model)
        result |= {"engine_before": before, "engine_after": engine.prompt_logprobs(probe.prompt_ids, probe.completion_ids)}
    if dist.rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    if engine is not None:
        engine.close()  # last: under external_launcher it tears down the ranks' process group


if __name__ == "__main__":
    main(sys.argv[1], "--engine" in sys.argv[2:], 8 if "--lora" in sys.argv[2:] else 0)
