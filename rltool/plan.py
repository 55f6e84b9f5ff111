"""The plan printed before any work starts: derived sizes computed once, in one place, and a
memory estimate per device that refuses a config which cannot fit before any model loads."""
from __future__ import annotations

import os
from dataclasses import dataclass

from rltool.config import Config, ConfigError

GIB = 1024**3
LORA_LINEARS = 7  # q, k, v, o, gate, up, down: `all-linear` on a Llama-style block


def batch_plan(cfg: Config, hw) -> str:
    t, r = cfg.trainer, cfg.rollout
    completions = t.prompts_per_step * t.group_size
    per_rank = completions // hw.num_processes
    micro_steps = max(1, per_rank // t.micro_batch_size)
    lines = [
        f"plan: {cfg.algo.name} on {cfg.env.name} with {actors_line(cfg)} ({hw.device}, {hw.dtype}, "
        f"{hw.num_processes} process{'es' if hw.num_processes > 1 else ''}, engine={r.engine})",
        f"  prompts/step {t.prompts_per_step} x group {t.group_size} = {completions} completions/step",
        f"  per rank {per_rank} completions in {micro_steps} micro-batches of {t.micro_batch_size} "
        f"(accumulation steps per optimizer step: {micro_steps}, fewer when rows with advantage 0 are skipped)",
        f"  optimizer steps per rollout {cfg.algo.iterations}; max tokens/step "
        f"{completions * (r.max_new_tokens + r.max_prompt_len):,} (prompt <= {r.max_prompt_len}, completion <= {r.max_new_tokens})",
        f"  {t.max_steps} steps, eval every {t.eval_every or 'end'}, checkpoint every {t.save_every or 'never'}",
    ]
    return "\n".join(lines)


def actors_line(cfg: Config) -> str:
    """One actor: its path; several: name=path, frozen ones marked."""
    if len(cfg.actors) == 1:
        return cfg.lead_actor.path
    return ", ".join(f"{a.name}={a.path}{'' if a.trainable else ' (frozen)'}" for a in cfg.actors.values())


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a HF config.json (Llama-style decoder)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, path: str) -> "Shape":
        """A local model directory or a hub id (only its config.json is fetched)."""
        from transformers import AutoConfig

        return cls.from_dict(AutoConfig.from_pretrained(path).to_dict())

    @classmethod
    def from_dict(cls, c: dict) -> "Shape":
        c = c.get("text_config") or c
        heads = c["num_attention_heads"]
        return cls(hidden=c["hidden_size"], intermediate=c["intermediate_size"], layers=c["num_hidden_layers"],
                   heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads, vocab=c["vocab_size"],
                   tied=bool(c.get("tie_word_embeddings", False)))

    def params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        block = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate + 2 * h
        return self.layers * block + self.vocab * h * (1 if self.tied else 2) + h

    def lora_params(self, r: int) -> int:
        """r (in + out) per adapted linear, all-linear; an upper bound for narrower target_modules."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return self.layers * r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))


FIXED_PART_KEYS = {  # what to change when that part does not fit
    "weights": "actors.path (a smaller model) or actors.qlora=true",
    "grads": "actors.lora.r=16",
    "optimizer": "actors.lora.r=16",
    "reference": "algo.kl_coef=0 and trainer.ref_kl_rows=0, or actors.lora.r=16 (the reference is then the adapter switched off)",
    "engine": "hardware.vllm_kv_cache_gib (CPU) / hardware.vllm_gpu_memory_utilization (GPU)",
}


def memory_plan(cfg: Config, hw, shapes: "dict[str, Shape] | Shape", device_bytes: int) -> tuple[str, dict[str, float]]:
    """Per-device estimate in GiB, summed over the actors: weights, grads, optimizer, activations (worst
    case: max lengths), logits, reference model, rollout engine. ZeRO-3 shards weights/grads/optimizer
    over processes. Actors train in turn, so activations and logits are the largest actor's, not a sum;
    a frozen actor is only its engine. `shapes`: actor name -> Shape (one Shape: the policy's).

    Raises ConfigError when the parts that do not depend on sequence length (weights, grads,
    optimizer, reference, engine) already exceed the device; worst-case activations only warn, since
    real prompts and completions are usually far shorter than the limits.
    """
    shapes = shapes if isinstance(shapes, dict) else {cfg.lead_actor.name: shapes}
    per_actor = [actor_memory(cfg, hw, cfg.actors[name], shape, device_bytes) for name, shape in shapes.items()]
    served = set()
    for name, part in zip(shapes, per_actor):  # an engine several actors share is counted once
        key = engine_key(cfg, cfg.actors[name])
        part["engine"] *= key not in served
        served.add(key)
    parts = {k: (max if k in ("activations", "logits") else sum)(p[k] for p in per_actor) for k in per_actor[0]}
    gib = {k: v / GIB for k, v in parts.items()}
    fixed = sum(v for k, v in gib.items() if k not in ("activations", "logits"))
    total = sum(gib.values())
    if cfg.hardware.sleep_mode and hw.device == "cuda":  # vLLM sleeps while the trainer runs: peaks don't add
        total = max(total - gib["engine"], fixed)
    available = device_bytes / GIB
    where = f"{'GPU' if hw.device == 'cuda' else 'CPU RAM'} {available:.1f} GiB"
    ranks = hw.num_processes // cfg.hardware.num_machines if hw.device == "cpu" else 1  # CPU ranks of one machine share its RAM
    fixed, total = fixed * ranks, total * ranks
    line = (f"  memory per {'GPU' if hw.device == 'cuda' else 'rank'} (GiB, worst case"
            + (f", {len(shapes)} actors" if len(shapes) > 1 else "") + "): "
            + ", ".join(f"{k} {v:.2f}" for k, v in gib.items() if v)
            + f"; total {total:.1f}{f' for {ranks} ranks' if ranks > 1 else ''} of {where}")
    if fixed > available:
        biggest = max(FIXED_PART_KEYS, key=lambda k: gib[k])
        raise ConfigError(f"{FIXED_PART_KEYS[biggest]}: {biggest} needs {gib[biggest] * ranks:.1f} GiB of the ~{fixed:.1f} GiB "
                          f"(weights, gradients, optimizer, reference, engine) that cannot fit in {where}")
    if total > available:
        line += ("\n  warning: worst-case activations may not fit; lower trainer.micro_batch_size or "
                 "rollout.max_new_tokens, or set actors.gradient_checkpointing=true")
    return line, gib


def engine_key(cfg: Config, actor) -> tuple[str, str]:
    """Actors with equal keys share one rollout engine (rltool/actors/actor.py): frozen actors on one model,
    and with `rollout.multi_lora` trainable LoRA actors on one base model."""
    if not actor.trainable:
        return "frozen", actor.path
    if cfg.rollout.multi_lora and actor.lora.r > 0:
        return "multi_lora", actor.path
    return "own", actor.name


def actor_memory(cfg: Config, hw, actor, shape: Shape, device_bytes: int) -> dict[str, float]:
    """Bytes of one actor's parts (see memory_plan); a frozen actor has no trainer copy, only its engine."""
    b = 2 if hw.dtype == "bfloat16" else 4
    shard = hw.num_processes if cfg.hardware.zero_stage == 3 else 1
    P = shape.params()
    lora_r = actor.lora.r
    trainable = shape.lora_params(lora_r) if lora_r else P
    weight_bytes = 0.5 if actor.qlora else b  # NF4: 4 bits a weight
    tokens = cfg.trainer.micro_batch_size * (cfg.rollout.max_prompt_len + cfg.rollout.max_new_tokens)
    per_token_layer = (2 * shape.hidden if actor.gradient_checkpointing or cfg.hardware.gradient_checkpointing
                       else 10 * shape.hidden + 4 * shape.intermediate) * b  # inputs kept for backward
    train = 1 if actor.trainable else 0
    parts = {
        "weights": train * P * weight_bytes / shard,
        "grads": train * trainable * b / shard,
        "optimizer": train * trainable * (8 + (4 if b == 2 else 0)) / shard,  # Adam m, v in fp32 (+ fp32 master for bf16)
        "activations": train * tokens * shape.layers * per_token_layer,
        "logits": train * logits_bytes(cfg, shape),
        # LoRA: the adapter switched off is the reference, no copy
        "reference": train * P * b / shard if cfg.needs_reference(actor.name) and not lora_r else 0,
        "engine": (cfg.hardware.vllm_kv_cache_gib * GIB + P * b if hw.device == "cpu"  # KV space + vLLM's weights
                   else cfg.hardware.vllm_gpu_memory_utilization * device_bytes) if cfg.rollout.engine == "vllm" else 0,
    }
    return parts


def logits_bytes(cfg: Config, shape: Shape) -> int:
    """The update phase's logit-sized tensors: fp32 logits, softmax and their gradient (3 copies) of every
    completion token of a micro-batch on the plain path; of one chunk on the chunked path, plus the fp32
    (V, H) buffer its backward accumulates the head's gradient in."""
    t = cfg.trainer
    tokens = t.micro_batch_size * cfg.rollout.max_new_tokens
    if t.logprob_impl == "chunked":
        return min(t.logprob_chunk_size, tokens) * shape.vocab * 4 * 3 + shape.vocab * shape.hidden * 4
    return tokens * shape.vocab * 4 * 3


def device_memory(device: str) -> int:
    """Bytes of memory on one accelerator (cuda) or on this machine (cpu)."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
