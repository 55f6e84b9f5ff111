"""Rollout throughput: vLLM engine vs transformers `generate` on the embedded model (CPU, float32).

    nice -n 5 .venv/bin/python scripts/bench_rollout.py --prompts 16 --n 4 --max-new-tokens 128

Both engines are built the way `rltool train hardware=cpu rollout.engine=vllm|hf` builds them
(composed config -> make_engine), and sample the same GSM8K eval prompts (env chat messages + the
tokenizer's chat template) with the same n, max_new_tokens and temperature 1.0. Each engine gets
one warm-up call on *other* prompts, so vLLM's prefix cache holds nothing the timed call can reuse,
then one timed call. tokens/s counts generated tokens up to and including EOS; HF's padded steps
after a row finishes are not counted (that padding is part of its cost).
Also reported: vLLM engine startup and the trainer -> vLLM weight sync (mean of 3).

HF runs first, before vLLM exists in the process: a `rollout.engine=hf` run never starts vLLM, and
vLLM's CPU worker may change torch's thread settings (`torch_threads` records them).
Numbers on a shared machine are noisy: the load average is recorded next to them.
"""
from __future__ import annotations

import os

# In-process vLLM (colocated, as in training); both must be set before vllm / torch are imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import argparse
import json
import tempfile
from pathlib import Path
from time import perf_counter, process_time

REPO = Path(__file__).resolve().parent.parent


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from rltool.cli import to_config
    from rltool.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return to_config(cfg)  # OmegaConf.to_object + every __post_init__ and registry check


def timed_generate(engine, prompts, sampling) -> dict:
    t0, c0 = perf_counter(), process_time()
    outputs = engine.generate(prompts, sampling)
    seconds, cpu_s = perf_counter() - t0, process_time() - c0
    tokens = sum(len(c.token_ids) for group in outputs for c in group)
    truncated = sum(c.truncated for group in outputs for c in group)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "cpu_s": round(cpu_s, 3), "tokens_per_cpu_s": round(tokens / cpu_s, 1),
            "completions": sum(map(len, outputs)), "truncated": truncated}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default="bench_results/rollout.json")
    args = p.parse_args()

    import torch
    import transformers

    from rltool.actors.embedded import resolve_model_path
    from rltool.actors.load import load_model, load_tokenizer
    from rltool.envs import make_env
    from rltool.hardware import resolve_hardware
    from rltool.engines import make_engine, sync_weights
    from rltool.engines.engine import Sampling
    from rltool.engines.prompts import encode_chat

    overrides = ["hardware=cpu", "env=gsm8k", f"rollout.max_new_tokens={args.max_new_tokens}",
                 f"output_dir={tempfile.mkdtemp(prefix='bench_rollout-')}"]
    cfg = compose_config(overrides + ["rollout.engine=hf"])
    hw = resolve_hardware(cfg.hardware)
    model_dir = resolve_model_path(cfg.lead_actor.path)
    model = load_model(model_dir, hw.dtype, trainable=True)  # the trainer's model: HF generates with it
    tokenizer = load_tokenizer(model_dir)

    env = make_env(cfg.env)
    examples = env.eval_examples()
    assert len(examples) >= 2 * args.prompts, f"--prompts {args.prompts}: env has {len(examples)} eval examples"
    encode = lambda e: encode_chat(tokenizer, env.messages(e), cfg.rollout.max_prompt_len)  # noqa: E731
    prompts = [encode(e) for e in examples[:args.prompts]]
    warmup_prompts = [encode(e) for e in examples[args.prompts:2 * args.prompts]]
    sampling = Sampling(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    load_before = os.getloadavg()
    threads = {"before_vllm": torch.get_num_threads()}

    hf = make_engine(cfg, hw, model, tokenizer, model_dir)
    hf.generate(warmup_prompts, sampling)
    hf_result = timed_generate(hf, prompts, sampling)
    print(f"hf:   {hf_result}", flush=True)

    cfg = compose_config(overrides + ["rollout.engine=vllm"])
    t0 = perf_counter()
    vllm = make_engine(cfg, hw, model, tokenizer, model_dir)
    startup = perf_counter() - t0
    threads["after_vllm"] = torch.get_num_threads()
    from vllm import __version__ as vllm_version
    vllm.generate(warmup_prompts, sampling)
    vllm_result = timed_generate(vllm, prompts, sampling)
    print(f"vllm: {vllm_result}", flush=True)

    sync = []
    for _ in range(3):
        t0 = perf_counter()
        sync_weights(vllm, model)  # named_parameters(remove_duplicate=False), as after every optimizer step
        sync.append(perf_counter() - t0)

    result = {
        "bench": "rollout",
        "settings": {"model": model_dir, "dtype": hw.dtype, "device": hw.device, "prompts": args.prompts,
                     "prompt_source": "gsm8k eval split (embedded), chat template", "n": args.n,
                     "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
                     "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
                     "vllm_kv_cache_gib": cfg.hardware.vllm_kv_cache_gib,
                     "vllm_max_num_seqs": cfg.hardware.vllm_max_num_seqs,
                     "vllm_max_model_len": vllm.llm.llm_engine.model_config.max_model_len,
                     "warmup": "one call per engine, same n and max_new_tokens, on the next --prompts eval prompts",
                     "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "torch_threads": threads,
                     "cpu_count": os.cpu_count(), "nice": os.nice(0),
                     "versions": {"torch": torch.__version__, "vllm": vllm_version,
                                  "transformers": transformers.__version__}},
        "hf": hf_result,
        "vllm": vllm_result,
        "vllm_over_hf_tokens_per_s": round(vllm_result["tokens_per_s"] / hf_result["tokens_per_s"], 2),
        # Process CPU time (all threads; vLLM runs in-process) moves less with the machine's other load.
        "vllm_over_hf_tokens_per_cpu_s": round(vllm_result["tokens_per_cpu_s"] / hf_result["tokens_per_cpu_s"], 2),
        "vllm_startup_s": round(startup, 2),
        "vllm_weight_sync_s": round(sum(sync) / len(sync), 3),
        "vllm_weight_sync_runs_s": [round(s, 3) for s in sync],
        "loadavg_1_5_15": {"start": [round(x, 2) for x in load_before],
                           "end": [round(x, 2) for x in os.getloadavg()]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
