"""Multi-turn rollout throughput: a 4-turn 2-actor collaborative rollout vs a single-turn rollout of as many tokens.

    nice -n 5 .venv/bin/python scripts/bench_multiturn.py [--prompts 8] [--group 4] [--max-new-tokens 32] \
        [--repeats 3] [--enforce-eager] [--share-engine]

Speed goal: multi-turn tokens/s >= 0.8x single-turn tokens/s. Turns are batched per
actor (rltool/engines/conversation.py `run_turns`): at each turn every live conversation an actor
must answer goes to that actor's engine in one `generate` call; `generate_calls` in the JSON lists
each call's batch size, so a run that did not batch shows.

Config: composed as `rltool train hardware=cpu env=collab_arithmetic actors=two_smollm` composes it
(two SmolLM2-135M actors, `solver` and `checker`), `env.round_spec='solver -> checker -> solver ->
checker'`, `rollout.ignore_eos=true` so every turn generates exactly `--max-new-tokens` tokens.
Engines only, no trainer models: one vLLM engine per actor as in training (each trainable actor has
its own), each with `hardware.vllm_kv_cache_gib`; `--share-engine` gives both actors one engine
(`serving_actors`, what `rltool eval` does).

Multi-turn: `CollabEnv.play` -- the training rollout itself (chat-template views, batched turns,
scoring, trajectories) -- on `--prompts` problems x `--group` conversations, each of 4 turns x
`--max-new-tokens`. Single-turn: `rltool.algos.rollouts.sample_groups` (the single-turn training
rollout, scoring included) on the solver's engine, the same problems, `--group` completions each of
4 x `--max-new-tokens` tokens: the same number of generated tokens. tokens/s = generated tokens
(counted from what came back: the actors' own turn tokens / the completions) / wall seconds.

Each mode warms up once (problems not used later), then `--repeats` timed rollouts alternate
(multi, single, multi, ...) so slow drift of the machine's load hits both; each repeat uses fresh
problems, and every engine's prefix cache is reset before each timed rollout (as the weight sync
after each training step does). Reported: median / min / max tokens/s of each mode, the ratio of the
medians and the per-repeat (paired) ratios. Numbers on a shared machine are noisy: the load average
is recorded next to them.
"""
from __future__ import annotations

import os

# In-process vLLM (colocated, as in training); both must be set before vllm / torch are imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from time import perf_counter, process_time

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.8  # multi-turn tokens/s >= 0.8x single-turn tokens/s
ROUND_SPEC = "solver -> checker -> solver -> checker"


def compose_config(args):
    from hydra import compose, initialize_config_dir

    from rltool.cli import rewrite_overrides, to_config
    from rltool.config import register_configs

    turns_tokens = 4 * args.max_new_tokens  # the single-turn completion: max_model_len must hold it
    overrides = [
        "hardware=cpu", "env=collab_arithmetic", "actors=two_smollm", f"env.round_spec='{args.round_spec}'",
        f"trainer.prompts_per_step={args.prompts}", f"trainer.group_size={args.group}",
        f"trainer.micro_batch_size={args.group}",  # unused here (no update); must divide prompts x group
        f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.max_prompt_len={args.max_prompt_len}",
        f"eval.max_new_tokens={turns_tokens}", "rollout.ignore_eos=true", "rollout.temperature=1.0",
        "rollout.top_p=1.0", f"rollout.enforce_eager={str(args.enforce_eager).lower()}",
        f"hardware.vllm_kv_cache_gib={args.kv_cache_gib}", f"output_dir={tempfile.mkdtemp(prefix='bench_multiturn-')}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=rewrite_overrides(overrides))
    return to_config(cfg), overrides  # OmegaConf.to_object + every __post_init__ and registry check


class CountingEngine:
    """An engine that records the batch size (prompts x n) of every generate call."""

    def __init__(self, engine):
        self.engine, self.calls, self.seconds = engine, [], []

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts) * sampling.n)
        t0 = perf_counter()
        out = self.engine.generate(prompts, sampling)
        self.seconds.append(round(perf_counter() - t0, 3))
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def bench_actors(cfg, hw, share_engine: bool) -> dict:
    """name -> Actor with an engine and no trainer model: one engine per actor (as training builds
    them), or one per model (`serving_actors`, as `rltool eval`) with --share-engine."""
    from rltool.actors.actor import Actor, serving_actors, serving_engine
    from rltool.actors.embedded import resolve_model_path
    from rltool.actors.load import load_tokenizer

    if share_engine:
        actors = serving_actors(cfg, hw)
    else:
        actors = {}
        for name, spec in cfg.actors.items():
            acfg = cfg.actor_config(name)
            base_dir = resolve_model_path(spec.path)
            tokenizer = load_tokenizer(base_dir)
            actors[name] = Actor(name, spec, acfg, tokenizer, serving_engine(acfg, hw, tokenizer, base_dir), base_dir)
    engines = {}
    for a in actors.values():  # shared engines stay shared, each wrapped once
        key = id(a.engine)
        engines[key] = engines.get(key) or CountingEngine(a.engine)
        a.engine = engines[key]
    return actors


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def summarize(multi: list[dict], single: list[dict]) -> dict:
    """Medians, ranges and ratios of the timed repeats (each a dict with tokens_per_s)."""
    m, s = [r["tokens_per_s"] for r in multi], [r["tokens_per_s"] for r in single]
    ratio = statistics.median(m) / statistics.median(s)
    paired = [a / b for a, b in zip(m, s)]
    return {"multi_tokens_per_s": spread(m), "single_tokens_per_s": spread(s),
            "ratio_of_medians": round(ratio, 3),
            "paired_ratios": {"values": [round(r, 3) for r in paired], "min": round(min(paired), 3),
                              "max": round(max(paired), 3)},
            "goal": GOAL, "meets_goal": ratio >= GOAL}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8, help="problems per rollout (trainer.prompts_per_step)")
    p.add_argument("--group", type=int, default=4, help="conversations / completions per problem (trainer.group_size)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per turn; the single-turn completion is 4x")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--round-spec", default=ROUND_SPEC, help="a fixed 4-turn schedule of the two actors")
    p.add_argument("--max-prompt-len", type=int, default=512, help="rollout.max_prompt_len (a turn's prompt budget)")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="hardware.vllm_kv_cache_gib (each engine)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM eager (starts faster, generates slower)")
    p.add_argument("--share-engine", action="store_true", help="one engine for both actors (same model)")
    p.add_argument("--out", default="bench_results/multiturn.json")
    args = p.parse_args()
    if min(args.prompts, args.group, args.max_new_tokens, args.repeats) < 1:
        p.error("--prompts, --group, --max-new-tokens and --repeats must be >= 1")

    import torch
    import transformers

    from rltool.algos.rollouts import GroupIds, RolloutContext, sample_groups
    from rltool.envs import make_env
    from rltool.envs.round_spec import schedules
    from rltool.hardware import resolve_hardware
    from rltool.rewards.score import Scorer

    cfg, overrides = compose_config(args)
    env = make_env(cfg.env)
    names = list(cfg.actors)
    plan = schedules(env.spec(names), 0, 1, 1, "group")[0]
    if len(plan) != 4 or sorted(set(plan)) != sorted(names):
        p.error(f"--round-spec {args.round_spec!r}: the bench needs a fixed 4-turn schedule of {' and '.join(names)}; "
                f"got {plan}")
    turns = len(plan)
    examples = env.train_examples()
    need = (1 + args.repeats) * args.prompts
    assert len(examples) >= need, f"env has {len(examples)} train examples, the bench needs {need}"
    blocks = [examples[i * args.prompts:(i + 1) * args.prompts] for i in range(1 + args.repeats)]  # 0: warm-up

    hw = resolve_hardware(cfg.hardware)
    load_before = os.getloadavg()
    threads = {"before_vllm": torch.get_num_threads()}
    t0 = perf_counter()
    actors = bench_actors(cfg, hw, args.share_engine)
    startup = perf_counter() - t0
    threads["after_vllm"] = torch.get_num_threads()
    from vllm import __version__ as vllm_version
    engines = list({id(a.engine): a.engine for a in actors.values()}.values())

    scorer = Scorer.from_config(cfg.reward, cfg.rollout.max_new_tokens)
    multi_ctx = RolloutContext(cfg, actors["solver"].engine, actors["solver"].tokenizer, env, scorer,
                               draw=lambda k: [], actors=actors)
    # single-turn: the solver alone, its completions `turns` x max_new_tokens long
    single_cfg = copy.copy(cfg)
    single_cfg.rollout = dataclasses.replace(cfg.rollout, max_new_tokens=turns * args.max_new_tokens)
    single_ctx = RolloutContext(single_cfg, actors["solver"].engine, actors["solver"].tokenizer, env.task,
                                Scorer.from_config(cfg.reward, single_cfg.rollout.max_new_tokens),
                                draw=lambda k: [], actors={"solver": actors["solver"]})

    def rollout(mode: str, block: list) -> dict:
        for e in engines:
            e.llm.reset_prefix_cache()  # what the weight sync after each training step does
            e.calls.clear()
            e.seconds.clear()
        t0, c0 = perf_counter(), process_time()
        if mode == "multi":
            samples = env.play(multi_ctx, block, GroupIds(0))
            tokens = sum(sum(s.completion_mask) for s in samples)  # each actor's own turns: what it generated
        else:
            samples = sample_groups(single_ctx, block, GroupIds(0))
            tokens = sum(len(s.completion_ids) for s in samples)
        seconds, cpu_s = perf_counter() - t0, process_time() - c0
        return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
                "cpu_s": round(cpu_s, 3), "tokens_per_cpu_s": round(tokens / cpu_s, 1), "samples": len(samples),
                "generate_calls": {"shared": engines[0].calls[:]} if args.share_engine
                else {name: a.engine.calls[:] for name, a in actors.items()},
                "generate_seconds": {"shared": engines[0].seconds[:]} if args.share_engine
                else {name: a.engine.seconds[:] for name, a in actors.items()}}

    warmup = {mode: rollout(mode, blocks[0]) for mode in ("multi", "single")}
    print(f"warm-up: multi {warmup['multi']['tokens_per_s']} tok/s, single {warmup['single']['tokens_per_s']} tok/s",
          flush=True)
    runs = {"multi": [], "single": []}
    for k in range(args.repeats):
        for mode in ("multi", "single"):
            runs[mode].append(rollout(mode, blocks[1 + k]))
            print(f"repeat {k + 1} {mode}: {runs[mode][-1]['tokens']} tokens in {runs[mode][-1]['seconds']} s = "
                  f"{runs[mode][-1]['tokens_per_s']} tok/s", flush=True)

    expected = args.prompts * args.group * turns * args.max_new_tokens
    short = [r["tokens"] for mode in runs for r in runs[mode] if r["tokens"] != expected]
    if short:
        print(f"warning: some rollouts generated other than {expected} tokens: {short} "
              "(a conversation outgrew --max-prompt-len?)", flush=True)
    summary = summarize(runs["multi"], runs["single"])
    result = {
        "bench": "multiturn",
        "settings": {"overrides": overrides, "actors": {n: a.spec.path for n, a in actors.items()},
                     "engines": len(engines), "round_spec": args.round_spec, "turns": turns,
                     "prompts": args.prompts, "group": args.group, "conversations": args.prompts * args.group,
                     "max_new_tokens_per_turn": args.max_new_tokens,
                     "single_turn_max_new_tokens": turns * args.max_new_tokens,
                     "expected_tokens_per_rollout": expected, "repeats": args.repeats,
                     "ignore_eos": cfg.rollout.ignore_eos, "enforce_eager": cfg.rollout.enforce_eager,
                     "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
                     "max_prompt_len": cfg.rollout.max_prompt_len, "dtype": hw.dtype, "device": hw.device,
                     "vllm_kv_cache_gib": cfg.hardware.vllm_kv_cache_gib,
                     "vllm_max_num_seqs": cfg.hardware.vllm_max_num_seqs,
                     "warmup": "one rollout per mode on problems the timed repeats do not use",
                     "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "torch_threads": threads,
                     "cpu_count": os.cpu_count(), "nice": os.nice(0),
                     "versions": {"torch": torch.__version__, "vllm": vllm_version,
                                  "transformers": transformers.__version__}},
        **summary,
        "engine_startup_s": round(startup, 2),
        "warmup": warmup,
        "multi": runs["multi"],
        "single": runs["single"],
        "loadavg_1_5_15": {"start": [round(x, 2) for x in load_before],
                           "end": [round(x, 2) for x in os.getloadavg()]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    m, s = summary["multi_tokens_per_s"], summary["single_tokens_per_s"]
    print(f"multiturn: {turns}-turn 2-actor {m['median']} tok/s (min {m['min']}, max {m['max']}) vs single-turn "
          f"{s['median']} tok/s (min {s['min']}, max {s['max']}): {summary['ratio_of_medians']}x "
          f"(goal >= {GOAL}x: {'met' if summary['meets_goal'] else 'NOT met'}) -> {out}")
    for e in engines:
        e.close()


if __name__ == "__main__":
    main()
