"""Rollout engines (vLLM by default, HF generate for debugging) and trainer -> engine weight sync."""
from __future__ import annotations

from rltool import dist
from rltool.config import Config


def make_engine(cfg: Config, hw, model, tokenizer, model_dir: str, *, max_loras: int = 0, max_lora_rank: int = 16):
    """The rollout engine on `model_dir`; `max_loras` > 0: a vLLM engine serving that many LoRA adapters."""
    if cfg.rollout.engine == "hf":
        from rltool.engines.hf_engine import HFEngine

        return HFEngine(model, tokenizer, ignore_eos=cfg.rollout.ignore_eos)
    from rltool.engines.vllm_engine import VLLMEngine

    from rltool.algos.rollouts import ROLLOUTS  # here: rltool.algos imports this package

    h = cfg.hardware
    longest = max(ROLLOUTS[cfg.algo.rollout].max_new_tokens(cfg), cfg.eval.max_new_tokens)
    engine = VLLMEngine(model_dir, dtype=hw.dtype, device=hw.device, seed=cfg.seed,
                        max_model_len=cfg.rollout.max_prompt_len + longest,
                        gpu_memory_utilization=h.vllm_gpu_memory_utilization, kv_cache_gib=h.vllm_kv_cache_gib,
                        max_num_seqs=h.vllm_max_num_seqs, sleep_mode=h.sleep_mode, ignore_eos=cfg.rollout.ignore_eos,
                        enforce_eager=cfg.rollout.enforce_eager, max_loras=max_loras, max_lora_rank=max_lora_rank,
                        external_launcher=dist.world_size() > 1)  # one engine per rank
    if cfg.lead_actor.qlora and model is not None:  # the trainer's base is model_dir's rounded to 4 bits: start vLLM on it
        sync_weights(engine, model)
    return engine


def sync_weights(engine, model) -> None:
    """Push the trainer's weights into the engine. Tied names are kept (lm_head.weight =
    embed_tokens.weight): vLLM's CPU backend keeps a separate lm_head copy and would silently keep
    generating with the old one otherwise. A LoRA policy is pushed merged (W + BA under the base
    names): the engine holds the full base model. An engine that serves the actor's adapter instead
    (`rollout.multi_lora`) takes the adapter alone."""
    if hasattr(engine, "load_adapter"):
        engine.load_adapter(model)
        return
    from rltool.train_backend import weights_for_engine

    engine.update_weights(weights_for_engine(model))
