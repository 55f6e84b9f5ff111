"""The engines' side of a training step: asleep while the trainers update, awake for everything else.

With GPU sleep mode (`hardware.sleep_mode`) vLLM's memory is freed for the updates. An engine has to
be awake for any `generate` (vLLM queues requests to a sleeping engine and never runs them) and for
any weight sync (its weights sit in CPU buffers until it wakes). So every engine sleeps once after
the rollout and every engine wakes once before the syncs, whether its actor trains, stayed silent
this step, or is frozen (a checker, a judge): the next rollout and eval find every engine awake.
tests/unit/test_engine_lifecycle.py runs this against a fake engine that enforces vLLM's contract.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional


def distinct_engines(actors: Iterable) -> list:
    """Each engine once: frozen actors on one model share an engine, and the LoRA actors of one multi-LoRA
    engine generate through views of it (`AdapterView.base`)."""
    engines = (getattr(a.engine, "base", a.engine) for a in actors)
    return list({id(e): e for e in engines}.values())


def update_and_sync(actors: dict, update: Callable[[object], Optional[dict]], timer) -> dict:
    """The step after its rollout: every engine asleep while each trainable actor updates (`update(actor)`
    returns its metrics, or None when it had nothing to train on), then every engine awake, then each
    actor that updated pushes its weights to its engine. Returns the updates' metrics."""
    engines = distinct_engines(actors.values())
    for engine in engines:
        engine.sleep()  # GPU + hardware.sleep_mode: vLLM's weights to CPU, KV cache freed; no-op otherwise
    metrics, updated = {}, []
    for actor in (a for a in actors.values() if a.trainable):
        result = update(actor)
        if result is not None:
            metrics |= result
            updated.append(actor)
    for engine in engines:
        engine.wake()  # before the syncs, and for the next rollout or eval: any actor may speak then
    for actor in updated:
        with timer("sync"):
            actor.sync()
    return metrics
