"""The actors of a run at train time: each one's engine and, when trainable, its trainer copy.

`actors` in the config maps names to models. At setup every actor gets a tokenizer and a rollout
engine (frozen actors with the same model share one); a trainable actor also gets its trainer model,
optimizer, LR schedule and KL reference, and trains under `cfg.actor_config(name)` (the run's config
with its own algo overrides and learning rate). The loop then treats each trainable actor alike:
log-probs, advantages, update, sync of its weights to its own engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from rltool import ckpt, dist, train_backend
from rltool.actors.embedded import resolve_model_path
from rltool.actors.load import load_model, load_policy, load_reference, load_tokenizer
from rltool.actors.lora import AdapterDisabled
from rltool.config import ActorConfig, Config
from rltool.plan import engine_key
from rltool.engines import make_engine, sync_weights
from rltool.engines.engine import Sampling


@dataclass
class Actor:
    name: str
    spec: ActorConfig
    cfg: Config
    """The run's config as this actor trains under it (its algo overrides and lr)."""
    tokenizer: Any
    engine: Any
    base_dir: str
    """The model the actor started from (actors.<name>.path, resolved): the KL reference's weights."""
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    ref_model: Any = None

    @property
    def trainable(self) -> bool:
        return self.spec.trainable

    def sampling(self, n: int = 1, max_new_tokens: Optional[int] = None) -> Sampling:
        r = self.cfg.rollout
        return Sampling(n=n, temperature=r.temperature, top_p=r.top_p, max_new_tokens=max_new_tokens or r.max_new_tokens)

    def sync(self) -> None:
        """Push the trainer's new weights into this actor's engine (awake: rltool/engines/lifecycle.py)."""
        sync_weights(self.engine, self.model)

    def close(self) -> None:
        self.engine.close()


def build_actors(cfg: Config, hw, accelerator, resume_from: Optional[Path], lr_lambda) -> dict[str, Actor]:
    """Every actor of `cfg.actors`, in config order; trainable ones resume from `resume_from`."""
    actors, engines, views = {}, {}, {}
    shared_lora = lora_groups(cfg)
    for name, spec in cfg.actors.items():
        started = time.perf_counter()
        acfg = cfg.actor_config(name)
        base_dir = dist.local_main_first(lambda: resolve_model_path(spec.path))  # one writer per machine's cache
        saved = ckpt.actor_dir(resume_from, name) if resume_from and spec.trainable else None
        model_dir = str(ckpt.model_dir(saved)) if saved else base_dir  # resume: the weights of the checkpoint
        tokenizer = load_tokenizer(model_dir)
        actor = Actor(name, spec, acfg, tokenizer, None, base_dir)
        if spec.trainable:
            # LoRA resume: base from the actor's path + the checkpoint's adapter; vLLM starts from model_dir (merged).
            # ZeRO-3 resume: a fresh model here, then DeepSpeed's own checkpoint restores weights and Adam state.
            model = load_policy(spec, hw.dtype, base_dir=base_dir, resume_from=None if accelerator else saved,
                                device=None if accelerator else hw.device,
                                gradient_checkpointing=hw.cfg.gradient_checkpointing, seed=cfg.seed)
            optimizer = train_backend.make_optimizer([p for p in model.parameters() if p.requires_grad], acfg)
            actor.model, actor.optimizer = train_backend.prepare(accelerator, model, optimizer)
            if acfg.needs_reference(name):  # LoRA: the policy with its adapter off
                ref = load_reference(train_backend.unwrap(actor.model), base_dir, hw.dtype, None if accelerator else hw.device)
                actor.ref_model = ref if isinstance(ref, AdapterDisabled) else train_backend.prepare_frozen(accelerator, ref)
            actor.scheduler = torch.optim.lr_scheduler.LambdaLR(
                train_backend.torch_optimizer(actor.model, actor.optimizer), lr_lambda(acfg))
            if saved:
                ckpt.load_optimizer(saved, actor.optimizer, actor.model)
                ckpt.load_scheduler(saved, actor.scheduler)
            if name in shared_lora:  # one engine on the base model serves this actor's adapter
                if name not in views:
                    views.update(adapter_views(acfg, hw, tokenizer, base_dir, shared_lora[name]))
                actor.engine = views[name]
                actor.sync()  # its adapter from the first rollout on: fresh (B = 0) or the checkpoint's
            else:
                actor.engine = make_engine(acfg, hw, actor.model, tokenizer, model_dir)
        else:  # frozen: never updated, so actors with the same model can share one engine
            actor.engine = engines[base_dir] = engines.get(base_dir) or serving_engine(acfg, hw, tokenizer, base_dir)
        actors[name] = actor
        if dist.rank() == 0:  # its own log lines are in <run_dir>/logs/ (rltool/logs.py)
            label = "" if len(cfg.actors) == 1 else f" for {name}{'' if spec.trainable else ' (frozen)'}"
            others = [s.name for s in shared_lora.get(name, []) if s.name != name]
            label += f" (its adapter on one multi-LoRA engine with {', '.join(others)})" if others else ""
            print(f"engine: {cfg.rollout.engine}{label} ready in {time.perf_counter() - started:.0f} s")
    return actors


def lora_groups(cfg: Config) -> dict[str, list[ActorConfig]]:
    """`rollout.multi_lora`: actor name -> the trainable LoRA actors on its base model (its engine's adapters).
    Grouped by the memory plan's `engine_key`, so the plan counts exactly the engines built here."""
    by_engine: dict[tuple[str, str], list[ActorConfig]] = {}
    for spec in cfg.actors.values():
        key = engine_key(cfg, spec)
        if key[0] == "multi_lora":
            by_engine.setdefault(key, []).append(spec)
    return {spec.name: group for group in by_engine.values() for spec in group}


def adapter_views(cfg: Config, hw, tokenizer, base_dir: str, group: list[ActorConfig]) -> dict:
    """One multi-LoRA engine on `base_dir` and a view of it per actor of `group`."""
    from rltool.engines.lora_engine import engine_lora_rank, shared_adapter_views

    engine = make_engine(cfg, hw, None, tokenizer, base_dir, max_loras=len(group),
                         max_lora_rank=engine_lora_rank(max(spec.lora.r for spec in group)))
    return shared_adapter_views(engine, [spec.name for spec in group])


def serving_actors(cfg: Config, hw) -> dict[str, Actor]:
    """Every actor with an engine on its model and nothing else (`rltool eval`): actors on the same
    model share one engine."""
    actors, engines = {}, {}
    for name, spec in cfg.actors.items():
        base_dir = resolve_model_path(spec.path)
        tokenizer = load_tokenizer(base_dir)
        engine = engines[base_dir] = engines.get(base_dir) or serving_engine(cfg, hw, tokenizer, base_dir)
        actors[name] = Actor(name, spec, cfg.actor_config(name), tokenizer, engine, base_dir)
    return actors


def serving_engine(cfg: Config, hw, tokenizer, path: str):
    """An engine on the weights at `path`, never updated (the HF engine needs the model itself)."""
    model = load_model(path, hw.dtype, trainable=False, device=hw.device) if cfg.rollout.engine == "hf" else None
    return make_engine(cfg, hw, model, tokenizer, path)


def trainable(actors: dict[str, Actor]) -> list[Actor]:
    return [a for a in actors.values() if a.trainable]


def close_all(actors: dict[str, Actor]) -> None:
    """Each engine once (frozen actors may share one)."""
    for engine in {id(a.engine): a.engine for a in actors.values() if a.engine is not None}.values():
        engine.close()
