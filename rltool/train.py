"""The training loop. Setup first, then one loop whose body is a list of named phases:

    rollout -> logprobs -> advantage -> update (x iterations, per update pass) -> sync -> log -> checkpoint

Everything algorithm-specific is a registered function chosen by name in the config: the rollout
(GRPO groups, ERL's attempt/reflect/retry), the advantage estimator, the policy loss, the loss
aggregation and the KL estimator. Adding an algorithm means a YAML file, or one Python file that
registers a new piece, never a branch here.
"""
from __future__ import annotations

import math
import time
from contextlib import closing
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rltool import ckpt, dist, parallel
from rltool.actors.embedded import resolve_model_path
from rltool.actors.load import load_policy, load_reference, load_tokenizer
from rltool.actors.lora import AdapterDisabled
from rltool.algos.rollouts import ROLLOUTS, RolloutContext
from rltool.batch import collate
from rltool.config import Config, ConfigError
from rltool.data import PromptSampler
from rltool.envs import make_env
from rltool.evaluate import evaluate
from rltool.hardware import resolve_hardware
from rltool.logs import Tally
from rltool.metrics import MetricsLog, PhaseTimer, Progress, peak_memory_gib
from rltool.model_card import write_model_card
from rltool.plan import Shape, batch_plan, device_memory, memory_plan
from rltool.plot import plot_run
from rltool.rewards.score import Scorer
from rltool.rollout import make_engine, sync_weights
from rltool.rollout.prompts import fitting_examples
from rltool.steps import compute_advantages, compute_logprobs, optimize, rollout_metrics, split_updates


def train(cfg: Config) -> dict[str, float]:
    """Returns the final eval metrics ({} with eval.enabled=false): a multirun tables them per job."""
    # ---- setup: ranks, seed, hardware, actors, engine, env, optimizer, resume ----
    accelerator = parallel.start(cfg)  # launched: accelerate + DeepSpeed ZeRO-3 over every rank; else None
    hw = resolve_hardware(cfg.hardware)
    main = dist.rank() == 0  # writes logs, metrics and checkpoints
    torch.manual_seed(cfg.seed)
    run_dir, resume_from = Path(cfg.output_dir), None
    if cfg.resume:
        resume_from = ckpt.resolve_checkpoint(cfg.resume)
        run_dir = resume_from.parent.parent  # keep writing into the run being continued
        warn_config_drift(cfg, resume_from)
    run_dir = Path(dist.broadcast(str(run_dir)))  # ranks started a second apart must agree on ${now:...}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    base_dir = dist.local_main_first(lambda: resolve_model_path(cfg.actors.path))  # one writer per machine's cache
    model_dir = str(ckpt.model_dir(resume_from)) if resume_from else base_dir  # resume: weights from the checkpoint
    tokenizer = load_tokenizer(model_dir)
    env = make_env(cfg.env)
    train_examples, too_long = prompts_that_fit(env, tokenizer, cfg)  # refuses a max_prompt_len most prompts exceed
    plan = "\n".join([batch_plan(cfg, hw), f"  {len(train_examples)} training prompts ({too_long} left out: longer than "
                      f"rollout.max_prompt_len={cfg.rollout.max_prompt_len} tokens)",
                      memory_plan(cfg, hw, Shape.of(base_dir), device_memory(hw.device))[0]])
    if main:  # memory_plan above refuses what cannot fit, on every rank
        print(plan)
    # LoRA resume: base from actors.path + the checkpoint's adapter; vLLM starts from model_dir (merged).
    # ZeRO-3 resume: a fresh policy here, then DeepSpeed's own checkpoint restores weights and Adam state.
    model = load_policy(cfg.actors, hw.dtype, base_dir=base_dir, resume_from=None if accelerator else resume_from,
                        device=None if accelerator else hw.device, gradient_checkpointing=hw.cfg.gradient_checkpointing,
                        seed=cfg.seed)
    optimizer = parallel.make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)  # LoRA: adapter only
    model, optimizer = parallel.prepare(accelerator, model, optimizer)
    ref_model = None
    if cfg.algo.kl_coef > 0:  # LoRA: the policy with its adapter off
        ref_model = load_reference(parallel.unwrap(model), base_dir, hw.dtype, None if accelerator else hw.device)
        ref_model = ref_model if isinstance(ref_model, AdapterDisabled) else parallel.prepare_frozen(accelerator, ref_model)
    started = time.perf_counter()
    engine = make_engine(cfg, hw, model, tokenizer, model_dir)
    if main:  # its own log lines are in <run_dir>/logs/ (rltool/logs.py)
        print(f"engine: {cfg.rollout.engine} ready in {time.perf_counter() - started:.0f} s")

    scorer = Scorer.from_config(cfg.reward, cfg.rollout.max_new_tokens)
    sampler = PromptSampler(train_examples, cfg.seed)
    rollout = ROLLOUTS[cfg.algo.rollout](RolloutContext(cfg, engine, tokenizer, env, scorer,
                                                        rank_share(sampler.draw), rank=dist.rank()))

    scheduler = torch.optim.lr_scheduler.LambdaLR(parallel.torch_optimizer(model, optimizer), lr_lambda(cfg))
    start, history = 0, []
    if resume_from:
        state = ckpt.load_trainer_state(resume_from)
        ckpt.load_optimizer(resume_from, optimizer, model)
        ckpt.load_scheduler(resume_from, scheduler)
        sampler.load_state_dict(state["sampler"])
        rollout.load_state_dict(state["rollout"])
        ckpt.set_rng_state(state["rng"])
        start, history = state["step"], state.get("history", [])
        if main:
            print(f"resumed from {resume_from} at step {start}")

    log = MetricsLog(run_dir, enabled=main, logger=cfg.trainer.logger,
                     config=OmegaConf.to_container(OmegaConf.structured(cfg)), run_name=run_dir.name)
    timer, tally = PhaseTimer(), Tally(enabled=main)
    eval_due = lambda s: cfg.eval.enabled and (s == 0 or s == cfg.trainer.max_steps or  # noqa: E731
                                                 (cfg.trainer.eval_every and s % cfg.trainer.eval_every == 0))

    # ---- the loop ----
    # closing(): a multirun runs its next job in this process, so a failing job must still let go of its engine
    with Progress(cfg.trainer.max_steps, start, enabled=main) as progress, closing(engine), closing(log):
        for step in range(start, cfg.trainer.max_steps):
            if eval_due(step) and not (resume_from and step == start):
                run_eval(engine, tokenizer, env, cfg, step, log)

            started = time.perf_counter(), time.process_time()
            with timer("generate"), parallel.offloaded(model, hw):  # GPU ZeRO-3: trainer shards in CPU RAM meanwhile
                samples, metrics = rollout(step)
                engine.sleep()  # GPU + hardware.sleep_mode: free vLLM's memory before the shards come back; no-op on CPU
            with timer("logprobs"):
                batch = compute_logprobs(model, ref_model, collate(samples, tokenizer.pad_token_id), cfg)
            with timer("advantage"):
                compute_advantages(samples, batch, cfg)
            with timer("update"):
                for part in split_updates(samples, batch):
                    for _ in range(cfg.algo.iterations):
                        metrics |= optimize(model, optimizer, part, cfg)
                scheduler.step()  # once per training step: lr_lambda counts steps, not update passes
            with timer("sync"):
                engine.wake()
                sync_weights(engine, model)

            phases = timer.split()
            metrics["perf/peak_mem_gib"] = peak_memory_gib(hw.device)  # per rank (averaged over ranks)
            metrics = step_metrics(metrics, samples, batch, scheduler, phases, started)  # over every rank
            log.log(step + 1, metrics)
            log.log_data_order(step + 1, list(dict.fromkeys(s.example_id for s in samples)))
            history.append({"step": step + 1, **metrics})
            progress.update(step + 1, metrics, phases)
            tally.add_metrics(step + 1, metrics)  # e.g. unscored rewards: said once with a count, not every step

            if cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0:
                save(run_dir, step + 1, model, tokenizer, optimizer, scheduler, sampler, rollout, history, cfg)

        final_metrics = run_eval(engine, tokenizer, env, cfg, cfg.trainer.max_steps, log) if eval_due(cfg.trainer.max_steps) else {}
        # before the engine closes: under external_launcher its shutdown tears down the ranks' process group
        final_dir = ckpt.save_final(run_dir, model, tokenizer)
    if main:
        plot_run(run_dir)
        tally.summary(cfg.trainer.max_steps - start)
        write_model_card(final_dir, run_dir, cfg, final_metrics)  # final/README.md, curves.png beside it
        print(f"done: {run_dir} (final model: {final_dir})")
    return final_metrics


def prompts_that_fit(env, tokenizer, cfg: Config) -> tuple[list, int]:
    """Training examples whose prompt fits rollout.max_prompt_len (never cut from the left: the task
    would go), and how many were left out. Most of them too long is a config mistake, refused."""
    examples = env.train_examples()
    kept, too_long = fitting_examples(examples, env.messages, tokenizer, cfg.rollout.max_prompt_len)
    if too_long * 2 > len(examples):
        raise ConfigError(f"rollout.max_prompt_len={cfg.rollout.max_prompt_len}: {too_long} of {len(examples)} training "
                          f"prompts of env={cfg.env.name} are longer; raise it")
    return kept, too_long


def rank_share(draw):
    """draw(k) for this rank: every rank advances the shared sampler by k x world and keeps its own
    k prompts, so ranks see different prompts and a resume sees the same ones."""
    world, rank = dist.world_size(), dist.rank()
    return draw if world == 1 else (lambda k: draw(k * world)[rank * k:(rank + 1) * k])


SUMMED_OVER_RANKS = ("rollout/tokens", "rollout/gen_tokens", "rollout/samples", "rollout/groups", "reward/unscored",
                     "update/rows")


def step_metrics(metrics: dict, samples, batch, scheduler, phases: dict[str, float],
                 started: tuple[float, float]) -> dict[str, float]:
    """Everything logged for one step. The float() conversion is the step's one device sync."""
    metrics = metrics | rollout_metrics(samples, batch) | {f"time/{k}": v for k, v in phases.items()}
    metrics = dist.combine_metrics({k: float(v) for k, v in metrics.items()}, summed=SUMMED_OVER_RANKS)
    metrics["perf/lr"] = scheduler.get_last_lr()[0]
    metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(phases.get("generate", 0.0), 1e-9)
    metrics["time/step"] = time.perf_counter() - started[0]
    metrics["time/step_cpu"] = time.process_time() - started[1]  # all threads: above wall when they overlap
    return {k: float(v) for k, v in metrics.items()}


def run_eval(engine, tokenizer, env, cfg: Config, step: int, log: MetricsLog) -> dict:
    started = time.perf_counter()
    metrics, rows = evaluate(engine, tokenizer, env, cfg)  # each rank a share of the problems, metrics over all
    log.log(step, metrics)
    log.log_samples(step, rows[:cfg.eval.log_samples])
    if dist.rank() == 0:
        print(f"eval @ step {step} ({time.perf_counter() - started:.0f} s): " + " | ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items()))
    return metrics


def save(run_dir, step, model, tokenizer, optimizer, scheduler, sampler, rollout, history, cfg: Config) -> None:
    state = {"step": step, "sampler": sampler.state_dict(), "rollout": rollout.state_dict(),
             "rng": ckpt.rng_state(), "history": history}
    # collective under ZeRO-3: every rank writes its shard
    path = ckpt.save_checkpoint(run_dir, step, model=model, tokenizer=tokenizer, optimizer=optimizer,
                                scheduler=scheduler, trainer_state=state,
                                config_yaml=OmegaConf.to_yaml(OmegaConf.structured(cfg)),
                                keep_last=cfg.trainer.keep_last)
    if dist.rank() == 0:
        print(f"checkpoint: {path}")


def lr_lambda(cfg: Config):
    t = cfg.trainer

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[t.lr_schedule]

    return factor


def warn_config_drift(cfg: Config, ckpt_dir: Path) -> None:
    """The checkpoint's config wins for what it stores; a differing seed or algorithm is worth a warning."""
    saved = OmegaConf.load(ckpt_dir / "config.yaml")
    now = OmegaConf.structured(cfg)
    for key in ("seed", "algo.name", "env.name", "trainer.prompts_per_step", "trainer.group_size",
                "actors.lora.r", "actors.qlora"):
        old, new = OmegaConf.select(saved, key), OmegaConf.select(now, key)
        if old != new:
            print(f"warning: resume: {key}={new!r} differs from the checkpoint's {old!r}")
