"""The training loop. Setup first, then one loop whose body is a list of named phases:

    rollout (the environment drives every actor)
      -> engines asleep: per trainable actor: logprobs -> advantage -> update (x iterations, per update pass)
      -> engines awake: per updated actor: sync -> log -> checkpoint

Everything algorithm-specific is a registered function chosen by name in the config: the rollout
(GRPO groups, ERL's attempt/reflect/retry), the advantage estimator, the policy loss, the loss
aggregation and the KL estimator. Adding an algorithm, an environment or an actor means a YAML file,
or one Python file that registers a new piece, never a branch here.
"""
from __future__ import annotations

import math
import time
from contextlib import ExitStack, closing

from rltool import ckpt, dist, train_backend
from rltool.run_dir import own_launched_run_dir
from rltool.run_start import config_yaml, start_run
from rltool.actors.actor import Actor, build_actors, close_all, trainable
from rltool.actors.embedded import resolve_model_path
from rltool.actors.load import load_tokenizer
from rltool.algos.rollouts import ROLLOUTS, RolloutContext
from rltool.records import Sample, collate
from rltool.config import Config, ConfigError
from rltool.data import PromptSampler
from rltool.envs import make_env
from rltool.evaluate import evaluate
from rltool.guard import RunAborted, StepGuard
from rltool.hardware import resolve_hardware
from rltool.logs import Tally
from rltool.metrics import MetricsLog, PhaseTimer, Progress, peak_memory_gib
from rltool.model_card import write_model_card
from rltool.plan import Shape, batch_plan, device_memory, memory_plan
from rltool.plot import plot_run
from rltool.rewards.score import Scorer
from rltool.engines.lifecycle import update_and_sync
from rltool.engines.prompts import fitting_examples
from rltool.watchdog import deadline
from rltool.update import (compute_advantages, compute_logprobs, optimize, ref_kl_probe, rollout_metrics,
                          split_updates)


def train(cfg: Config) -> dict[str, float]:
    """Returns the final eval metrics ({} with eval.enabled=false): a multirun tables them per job."""
    # ---- setup: ranks, seed, hardware, env, actors (models, engines, optimizers), resume ----
    accelerator = train_backend.start(cfg)  # launched: accelerate + DeepSpeed ZeRO-3 over every rank; else None
    own_launched_run_dir(cfg)  # launched by hand or SLURM: global rank 0 claims the run dir / moves newer checkpoints aside
    hw = resolve_hardware(cfg.hardware)
    run = start_run(cfg, DRIFT_KEYS, ACTOR_DRIFT_KEYS)  # seed, run dir (resume: the run continued), config.yaml, log
    run_dir, resume_from, log, main = run.run_dir, run.resume_from, run.log, run.main  # main: rank 0, which writes
    base_dirs = {a.name: dist.local_main_first(lambda: resolve_model_path(a.path)) for a in cfg.actors.values()}
    env = make_env(cfg.env)
    # the policy's chat template decides what fits; refuses a max_prompt_len most prompts exceed
    train_examples, too_long = prompts_that_fit(env, load_tokenizer(base_dirs[cfg.lead_actor.name]), cfg)
    plan = "\n".join([batch_plan(cfg, hw), f"  {len(train_examples)} training prompts ({too_long} left out: longer than "
                      f"rollout.max_prompt_len={cfg.rollout.max_prompt_len} tokens)",
                      memory_plan(cfg, hw, {n: Shape.of(d) for n, d in base_dirs.items()}, device_memory(hw.device))[0]])
    if main:  # memory_plan above refuses what cannot fit, on every rank
        print(plan)
    actors = build_actors(cfg, hw, accelerator, resume_from, lr_lambda)
    learners = trainable(actors)
    policy = actors[cfg.lead_actor.name]

    scorer = Scorer.from_config(cfg.reward, cfg.rollout.max_new_tokens)
    guard = StepGuard.from_config(cfg)  # stops a run whose rewards keep failing or whose updates keep being nan
    sampler = PromptSampler(train_examples, cfg.seed)
    rollout = ROLLOUTS[cfg.algo.rollout](RolloutContext(cfg, policy.engine, policy.tokenizer, env, scorer,
                                                        rank_share(sampler.draw), rank=dist.rank(), actors=actors))
    start, history = 0, []
    if resume_from:
        state = ckpt.load_trainer_state(resume_from)
        sampler.load_state_dict(state["sampler"])
        rollout.load_state_dict(state["rollout"])
        ckpt.set_rng_states(state["rng"])
        start, history = state["step"], state.get("history", [])
        if main:
            print(f"resumed from {resume_from} at step {start}")

    timer, tally = PhaseTimer(), Tally(enabled=main)
    eval_due = lambda s: cfg.eval.enabled and (s == 0 or s == cfg.trainer.max_steps or  # noqa: E731
                                                 (cfg.trainer.eval_every and s % cfg.trainer.eval_every == 0))

    # ---- the loop ----
    # closing(): a multirun runs its next job in this process, so a failing job must still let go of its engines
    with Progress(cfg.trainer.max_steps, start, enabled=main) as progress, closing(Engines(actors)), closing(log), \
            closing(scorer):
        for step in range(start, cfg.trainer.max_steps):
            if eval_due(step) and not (resume_from and step == start):
                run_eval(actors, env, cfg, step, log)

            started = time.perf_counter(), time.process_time()
            # GPU ZeRO-3: trainer shards in CPU RAM meanwhile; a hung engine or reward is named, not waited on
            with timer("generate"), deadline("generate", step + 1, cfg.rollout.timeout_s), offloaded(learners, hw):
                samples, metrics = rollout(step)  # the environment drives every actor
            metrics |= scorer.step_metrics()  # rewards that failed or timed out, by name

            def update(actor: Actor) -> dict | None:  # each on its own turns, in its own groups, under its own settings
                with offloaded([a for a in learners if a is not actor], hw):
                    return train_actor(actor, [s for s in samples if s.actor == actor.name], timer,
                                       prefix=f"{actor.name}/" if len(actors) > 1 else "")
            # every engine asleep for the updates (GPU sleep mode), all awake again before the weight syncs
            metrics |= update_and_sync(actors, update, timer)

            phases = timer.split()
            metrics["perf/peak_mem_gib"] = peak_memory_gib(hw.device)  # per rank (averaged over ranks)
            metrics = step_metrics(metrics, samples, policy.scheduler, phases, started)  # over every rank
            log.log(step + 1, metrics)
            log.log_data_order(step + 1, list(dict.fromkeys(s.example_id for s in samples)))
            history.append({"step": step + 1, **metrics})
            progress.update(step + 1, metrics, phases)
            reasons = scorer.errors_over_ranks(metrics)  # why rewards failed, on any rank (a collective when they did)
            tally.add_metrics(step + 1, metrics, reasons)  # e.g. unscored rewards: said once with a count, not every step
            try:
                guard.check(step + 1, metrics, reasons)  # combined metrics: the same decision on every rank
            except RunAborted as e:
                if e.save:
                    save(run_dir, step + 1, learners, sampler, rollout, history, cfg)
                raise

            if cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0:
                save(run_dir, step + 1, learners, sampler, rollout, history, cfg)

        final_metrics = run_eval(actors, env, cfg, cfg.trainer.max_steps, log) if eval_due(cfg.trainer.max_steps) else {}
        # before the engines close: under external_launcher their shutdown tears down the ranks' process group
        final_dir = ckpt.save_final(run_dir, learners)
    if main:
        plot_run(run_dir)
        tally.summary(cfg.trainer.max_steps - start)
        for actor in learners:  # final/<name>/README.md, curves.png beside it
            write_model_card(final_dir / actor.name, run_dir, cfg.actor_config(actor.name), final_metrics)
        print(f"done: {run_dir} (final {'model' if len(learners) == 1 else 'models'}: "
              + ", ".join(str(final_dir / a.name) for a in learners) + ")")
    return final_metrics


def train_actor(actor: Actor, samples: list[Sample], timer: PhaseTimer, prefix: str) -> dict[str, float] | None:
    """One trainable actor's share of a step: log-probs, advantages, update(s); its engine is synced after
    (rltool/engines/lifecycle.py). Returns its update and rollout metrics, names prefixed with `<actor>/` when
    the run has several actors; None when it did not speak this step (nothing trained, nothing to sync)."""
    cfg = actor.cfg
    # ZeRO-3: forwards and steps are collective, so a rank with nothing to train on this step (a filter
    # kept none of its episodes, a schedule skipped the actor here) still joins, with one row of weight 0
    anyone = dist.max_over_ranks(len(samples)) if train_backend.is_deepspeed(actor.model) else len(samples)
    if not anyone:  # it did not speak this step on any rank
        actor.scheduler.step()
        return None
    rows = samples or [idle_row(actor)]
    metrics = {}
    with timer("logprobs"):
        batch = compute_logprobs(actor.model, actor.ref_model, collate(rows, actor.tokenizer.pad_token_id), cfg)
        if actor.ref_model is not None and cfg.algo.kl_coef == 0:  # trainer.ref_kl_rows: measured, not trained on
            metrics |= ref_kl_probe(actor.ref_model, batch, cfg)
    with timer("advantage"):
        compute_advantages(rows, batch, cfg)
    with timer("update"):
        for part in split_updates(rows, batch):
            for _ in range(cfg.algo.iterations):
                metrics |= optimize(actor.model, actor.optimizer, part, cfg)
        actor.scheduler.step()  # once per training step: lr_lambda counts steps, not update passes
    metrics = {k: float(v) for k, v in metrics.items()} | {"update/skipped_nonfinite": train_backend.pop_skipped_nonfinite()}
    if prefix:  # the actor's own view of the step; the unprefixed rollout metrics are over every actor
        metrics |= rollout_metrics(samples) | {"perf/lr": actor.scheduler.get_last_lr()[0]}
    return {prefix + k: v for k, v in metrics.items()}


def idle_row(actor: Actor) -> Sample:
    """A one-token row that trains nothing (loss weight 0, unscored, not a first attempt)."""
    pad = actor.tokenizer.pad_token_id or 0
    return Sample(prompt_ids=[pad], completion_ids=[pad], sample_logp=[0.0], group=-1 - dist.rank(), reward=None,
                  loss_weight=0.0, first_attempt=False, actor=actor.name)


class Engines:
    """closing() target: every actor's engine, each closed once."""

    def __init__(self, actors: dict[str, Actor]):
        self.actors = actors

    def close(self) -> None:
        close_all(self.actors)


def offloaded(actors: list[Actor], hw):
    """GPU ZeRO-3 with hardware.offload_between_phases: these actors' trainer states in CPU RAM meanwhile."""
    stack = ExitStack()
    for actor in actors:
        stack.enter_context(train_backend.offloaded(actor.model, hw))
    return stack


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
                     "update/rows", "update/skipped_nonfinite")


def step_metrics(metrics: dict, samples, scheduler, phases: dict[str, float],
                 started: tuple[float, float]) -> dict[str, float]:
    """Everything logged for one step. The float() conversion is the step's one device sync."""
    metrics = metrics | rollout_metrics(samples) | {f"time/{k}": v for k, v in phases.items()}
    metrics = {k: float(v) for k, v in metrics.items()}
    summed = tuple(k for k in metrics if k in SUMMED_OVER_RANKS or k.split("/", 1)[-1] in SUMMED_OVER_RANKS
                   or k.startswith("reward/failed/"))
    metrics = dist.combine_metrics(metrics, summed=summed)
    metrics["perf/lr"] = scheduler.get_last_lr()[0]
    metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(phases.get("generate", 0.0), 1e-9)
    metrics["time/step"] = time.perf_counter() - started[0]
    metrics["time/step_cpu"] = time.process_time() - started[1]  # all threads: above wall when they overlap
    return {k: float(v) for k, v in metrics.items()}


def run_eval(actors: dict[str, Actor], env, cfg: Config, step: int, log: MetricsLog) -> dict:
    started = time.perf_counter()
    with deadline("eval", step, cfg.rollout.timeout_s):
        metrics, rows = evaluate(actors, env, cfg)  # each rank a share of the problems, metrics over all
    log.log(step, metrics)
    log.log_samples(step, rows[:cfg.eval.log_samples])
    if dist.rank() == 0:
        print(f"eval @ step {step} ({time.perf_counter() - started:.0f} s): " + " | ".join(f"{k.split('eval/')[-1]} {v:.3f}" for k, v in metrics.items()))
    return metrics


def save(run_dir, step, learners: list[Actor], sampler, rollout, history, cfg: Config) -> None:
    state = {"sampler": sampler.state_dict(), "rollout": rollout.state_dict(), "history": history}
    # collective under ZeRO-3: every rank writes its shard (the step and every rank's RNGs are added by ckpt)
    path = ckpt.save_checkpoint(run_dir, step, actors=learners, trainer_state=state, config_yaml=config_yaml(cfg),
                                keep_last=cfg.trainer.keep_last)
    if dist.rank() == 0:
        print(f"checkpoint: {path}")


DRIFT_KEYS = ("seed", "algo.name", "env.name", "trainer.prompts_per_step", "trainer.group_size")
ACTOR_DRIFT_KEYS = ("path", "lora.r", "qlora", "trainable")
"""What a checkpoint of this loop fixed: a resume that changes one is warned (rltool/run_start.py)."""


def lr_lambda(cfg: Config):
    t = cfg.trainer

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[t.lr_schedule]

    return factor
