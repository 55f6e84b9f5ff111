"""rollout.multi_lora: two LoRA actors' adapters served by one vLLM engine on the shared base model.

In process, with the embedded model and a real eager vLLM engine: both actors generate through one
engine, each sees its own adapter after a sync (vLLM's log-probs equal the trainer's PEFT forward),
a second sync replaces the served adapter (new LoRA id, the old files gone) and leaves the other
actor's alone; a checkpoint's adapter is served from the first rollout of a resumed run.
"""

import os

import pytest
import torch

from rltool import ckpt
from rltool.actors.actor import build_actors, close_all
from rltool.hardware import resolve_hardware
from rltool.train import lr_lambda
from tests.integration.test_multi_actor import built_actors, probe_logp

LORA = ["actors=two_smollm", "actors.solver.lora.r=8", "actors.checker.lora.r=4", "rollout.multi_lora=true"]


def lora_b(actor):
    return [p for n, p in actor.model.named_parameters() if "lora_B" in n]


@torch.no_grad()
def move_adapter(actor, seed: int) -> None:
    """An update stand-in: the adapter's B (0 when fresh) set to small random values."""
    g = torch.Generator().manual_seed(seed)
    for p in lora_b(actor):
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def lora_actors():
    yield from built_actors(*LORA)


def test_one_engine_serves_each_actors_adapter(lora_actors):
    _, actors = lora_actors
    solver, checker = actors["solver"], actors["checker"]
    assert solver.engine.engine is checker.engine.engine  # one vLLM engine, one view per actor
    ids = solver.tokenizer.encode("What is 12 + 35? The answer is 47.", add_special_tokens=False)
    fresh, _ = probe_logp(solver, ids)  # B = 0: every adapter is the base model
    for actor in (solver, checker):
        trainer, engine = probe_logp(actor, ids)
        assert torch.allclose(trainer, fresh) and torch.allclose(engine, fresh, atol=2e-3), actor.name
    move_adapter(solver, 1)  # two different updates: each adapter moves the model its own way
    move_adapter(checker, 2)
    first = {a.name: (a.engine.request.lora_int_id, a.engine.request.lora_path) for a in (solver, checker)}
    solver.sync()
    checker.sync()
    probes = {a.name: probe_logp(a, ids) for a in (solver, checker)}
    for name, (trainer, engine) in probes.items():
        assert (trainer - fresh).abs().max() > 0.1, name  # the adapter changed the model
        assert torch.allclose(trainer, engine, atol=2e-3), (name, trainer, engine)
    assert (probes["solver"][0] - probes["checker"][0]).abs().max() > 0.1  # a swapped adapter would show
    for a in (solver, checker):  # served under a new id and path; the old adapter's files are gone
        old_id, old_path = first[a.name]
        assert a.engine.request.lora_int_id != old_id and not os.path.exists(old_path)
    assert len(solver.engine.engine.llm.llm_engine.list_loras()) <= 2  # replaced, not accumulated
    with torch.no_grad():  # a later update of the solver alone leaves the checker's served adapter as it was
        for p in lora_b(solver):
            p.mul_(-1)
    solver.sync()
    trainer, engine = probe_logp(solver, ids)
    assert torch.allclose(trainer, engine, atol=2e-3) and (trainer - probes["solver"][0]).abs().max() > 0.1
    assert torch.allclose(probe_logp(checker, ids)[1], probes["checker"][1], atol=1e-5)


def test_resumed_run_serves_the_checkpoints_adapter(lora_actors, tmp_path):
    cfg, actors = lora_actors
    learners = [actors["solver"], actors["checker"]]
    for seed, a in enumerate(learners, start=3):
        move_adapter(a, seed)  # trained adapters, unlike the base a fresh adapter equals
    step = ckpt.save_checkpoint(tmp_path, 1, actors=learners, trainer_state={"step": 1}, config_yaml="seed: 0\n",
                                keep_last=1)
    ids = learners[0].tokenizer.encode("Resume: 3 * 7 = 21.", add_special_tokens=False)
    resumed = build_actors(cfg, resolve_hardware(cfg.hardware), None, step, lr_lambda)
    try:
        for a in learners:
            before, _ = probe_logp(a, ids)
            with a.model.disable_adapter():
                base, _ = probe_logp(a, ids)
            assert (before - base).abs().max() > 0.1, a.name
            trainer, engine = probe_logp(resumed[a.name], ids)
            assert torch.allclose(trainer, before, atol=1e-5), a.name
            assert torch.allclose(engine, before, atol=2e-3), a.name  # served before any sync of the new run
    finally:
        close_all(resumed)
