"""Peak memory of one update phase (forward + backward + optimizer step): chunked vs plain log-probs.

    nice -n 19 .venv/bin/python scripts/bench_memory.py                      # CPU: peak RSS delta, embedded model
    python scripts/bench_memory.py --device cuda --model Qwen/Qwen2.5-1.5B-Instruct   # GPU: max_memory_allocated

Each measurement runs in a fresh subprocess of this script (on CPU the peak RSS, ru_maxrss, only
ever grows): load the model, take one warm-up update at a tiny shape (Adam's state and the
gradients then exist), note the memory in use, run one update at the measured shape and report
the peak above that baseline. The update is the loop's: `completion_logp` (entropy on, the
sampling temperature) -> a GRPO-style loss -> backward -> AdamW step, on a synthetic batch of
B prompts of P tokens and T completion tokens.

Three ways of getting the log-probs are measured at the same shape: `plain` (the full (B, T, V)
logits), `chunked` (trainer.logprob_impl=chunked) and `none` (a loss on the final hidden states,
no head at all). peak(impl) - peak(none) is the logits-related memory of impl. Then, for plain
and chunked, the largest micro-batch at `--fit-tokens` completion tokens whose update fits in
`--budget-gib` (predicted from batches 1 and 2, then measured). Writes bench_results/memory.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3


def probe(impl: str, batch: int, tokens: int, args) -> dict:
    """One update at (batch, tokens) in this process; returns peak memory above the baseline and time."""
    import resource

    import torch

    from rltool.actors.embedded import resolve_model_path
    from rltool.actors.load import load_model
    from rltool.actors.logprobs import completion_logp

    device = args.device
    torch.manual_seed(0)
    model = load_model(resolve_model_path(args.model), args.dtype, trainable=True,
                       gradient_checkpointing=args.grad_ckpt, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    V = model.config.vocab_size

    def update(B: int, T: int) -> None:
        ids = torch.randint(0, V, (B, args.prompt_len + T), device=device)  # (B, P+T)
        mask = torch.ones_like(ids)
        if impl == "none":  # the decoder alone: what every path shares
            hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            loss = hidden[:, -T:].float().pow(2).mean()
        else:
            out = completion_logp(model, ids, mask, args.prompt_len, args.temperature, with_entropy=True,
                                  impl=impl, chunk_size=args.chunk_size)
            adv = torch.randn(B, 1, device=device)  # (B, 1)
            loss = -(out.logp * adv).mean() + 0 * out.entropy.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated: part of the baseline, not the delta

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    update(1, 8)  # warm-up: Adam state, gradients, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss()
    t0 = time.perf_counter()
    update(batch, tokens)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"impl": impl, "batch": batch, "tokens": tokens, "peak_delta_gib": round((peak - base) / GIB, 3),
            "update_s": round(time.perf_counter() - t0, 2), "vocab": V}


def run_probe(impl: str, batch: int, tokens: int, args) -> dict:
    cmd = [sys.executable, __file__, "--probe", impl, str(batch), str(tokens), *passthrough(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # killed for memory counts as not fitting
        return {"impl": impl, "batch": batch, "tokens": tokens, "failed": proc.returncode,
                "stderr_tail": proc.stderr[-500:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def passthrough(args) -> list[str]:
    return ["--device", args.device, "--model", args.model, "--dtype", args.dtype, "--prompt-len", str(args.prompt_len),
            "--chunk-size", str(args.chunk_size), "--temperature", str(args.temperature)] + \
        (["--grad-ckpt"] if args.grad_ckpt else [])


def largest_fitting(impl: str, args, trace: list[dict]) -> int:
    """Largest micro-batch at args.fit_tokens whose peak delta <= budget. The peak is linear in the
    micro-batch at a fixed length, so: measure batches 1 and 2, predict from the line, then measure
    the prediction and step down until it fits (a search by doubling costs minutes a probe on CPU)."""
    fits = lambda r: "failed" not in r and r["peak_delta_gib"] <= args.budget_gib  # noqa: E731
    one, two = (run_probe(impl, b, args.fit_tokens, args) for b in (1, 2))
    trace += [one, two]
    if not fits(one):
        return 0
    slope = max(two["peak_delta_gib"] - one["peak_delta_gib"], 1e-3) if fits(two) else args.budget_gib
    b = min(int((args.budget_gib - one["peak_delta_gib"]) / slope) + 1, args.max_batch)
    while b > 2:
        r = run_probe(impl, b, args.fit_tokens, args)
        trace.append(r)
        if fits(r):
            return b
        b -= 1
    return b if fits(two) or b == 1 else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256, help="completion tokens at the fixed shape")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the decoder (as hardware=gpu8)")
    p.add_argument("--fit-tokens", type=int, default=768)
    p.add_argument("--budget-gib", type=float, default=3.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--skip-fixed", action="store_true", help="only the largest-micro-batch search")
    p.add_argument("--out", default="bench_results/memory.json")
    p.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)  # internal: impl batch tokens
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.probe:
        impl, batch, tokens = args.probe
        print(json.dumps(probe(impl, int(batch), int(tokens), args)))
        return

    result = {
        "bench": "memory", "device": args.device, "model": args.model, "dtype": args.dtype,
        "measure": "peak RSS above the post-warm-up RSS (ru_maxrss)" if args.device == "cpu"
                   else "torch.cuda.max_memory_allocated above memory_allocated after warm-up",
        "settings": {"prompt_tokens": args.prompt_len, "chunk_size": args.chunk_size, "temperature": args.temperature,
                     "gradient_checkpointing": args.grad_ckpt},
        "cpu_count": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.skip_fixed:
        fixed = {impl: run_probe(impl, args.micro_batch, args.tokens, args) for impl in ("none", "plain", "chunked")}
        logits = {impl: round(fixed[impl]["peak_delta_gib"] - fixed["none"]["peak_delta_gib"], 3)
                  for impl in ("plain", "chunked")}
        result |= {
            "fixed_shape": {"micro_batch": args.micro_batch, "completion_tokens": args.tokens},
            "update_peak_gib": {k: v["peak_delta_gib"] for k, v in fixed.items()},
            "update_s": {k: v["update_s"] for k, v in fixed.items()},
            "logits_related_gib": logits,
            "logits_reduction": round(logits["plain"] / max(logits["chunked"], 1e-3), 1),
            "probes": list(fixed.values()),
        }
    if not args.skip_fit:
        trace: list[dict] = []
        largest = {impl: largest_fitting(impl, args, trace) for impl in ("plain", "chunked")}
        result["largest_micro_batch"] = {"completion_tokens": args.fit_tokens, "budget_gib": args.budget_gib,
                                         **largest, "ratio": round(largest["chunked"] / max(largest["plain"], 1), 2)}
        result["fit_probes"] = trace
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("probes", "fit_probes")}, indent=2))


if __name__ == "__main__":
    main()
