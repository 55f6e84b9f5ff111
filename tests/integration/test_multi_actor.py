"""Several actors in one run, with the real embedded model and real vLLM engines (eager, tiny shapes).

In process: each trainable actor's engine serves that actor's own weights after a sync and a frozen
actor's engine never changes; a checkpoint restores every actor's weights and Adam state exactly.
The CLI runs are in test_multi_actor_cli.py.
"""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rltool import ckpt
from rltool.actors.actor import build_actors, close_all
from rltool.actors.logprobs import completion_logp
from rltool.cli import conf_dir, rewrite_overrides
from rltool.config import register_configs
from rltool.hardware import resolve_hardware
from rltool.train import lr_lambda

ACTORS = ["actors=two_smollm", "+actors.judge.preset=smollm2_135m", "actors.judge.trainable=false"]


def config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=rewrite_overrides(
            ["output_dir=x", "hardware=cpu", "rollout.enforce_eager=true", "rollout.max_new_tokens=8",
             "rollout.max_prompt_len=64", "eval.max_new_tokens=8", "hardware.vllm_kv_cache_gib=1", *overrides]))
    return OmegaConf.to_object(cfg)


def probe_logp(actor, ids):
    """The trainer's and the engine's log-probs of `ids[4:]` given `ids[:4]` (temperature 1)."""
    prompt, completion = ids[:4], ids[4:]
    x = torch.tensor([ids])
    with torch.no_grad():
        trainer = completion_logp(actor.model, x, torch.ones_like(x), 4, 1.0).logp[0]
    return trainer, torch.tensor(actor.engine.prompt_logprobs(prompt, completion))


def built_actors(*overrides):
    """A fixture body: (cfg, actors) built in process, then every engine closed and the actors dropped."""
    cfg = config(*overrides)
    actors = build_actors(cfg, resolve_hardware(cfg.hardware), None, None, lr_lambda)
    yield cfg, actors
    close_all(actors)
    actors.clear()  # the trainer models and Adam states too (tests/conftest.py then trims the heap)


@pytest.fixture(scope="module")
def three_actors():
    yield from built_actors(*ACTORS)


def test_each_engine_serves_its_own_actor_and_a_frozen_one_never_changes(three_actors):
    cfg, actors = three_actors
    solver, checker, judge = actors["solver"], actors["checker"], actors["judge"]
    assert judge.model is None and judge.optimizer is None and judge.engine is not solver.engine
    ids = solver.tokenizer.encode("What is 12 + 35? The answer is 47.", add_special_tokens=False)
    judge_before = torch.tensor(judge.engine.prompt_logprobs(ids[:4], ids[4:]))
    with torch.no_grad():  # move the two trained actors apart: the embedding (tied head) scaled differently
        solver.model.model.embed_tokens.weight.mul_(1.5)
        checker.model.model.embed_tokens.weight.mul_(0.5)
    solver.sync()
    checker.sync()
    for actor in (solver, checker):
        trainer, engine = probe_logp(actor, ids)
        assert torch.allclose(trainer, engine, atol=2e-3), (actor.name, trainer, engine)
    s_trainer, _ = probe_logp(solver, ids)
    c_trainer, _ = probe_logp(checker, ids)
    assert (s_trainer - c_trainer).abs().max() > 0.1  # the actors differ: a swapped sync would show
    judge_after = torch.tensor(judge.engine.prompt_logprobs(ids[:4], ids[4:]))
    assert torch.equal(judge_before, judge_after)


def test_checkpoint_restores_every_actor_weights_and_adam_state(three_actors, tmp_path):
    cfg, actors = three_actors
    learners = [actors["solver"], actors["checker"]]
    x = torch.tensor([actors["solver"].tokenizer.encode("One step of Adam, please.", add_special_tokens=False)])
    for a in learners:  # one real optimizer step each, so there is Adam state to restore
        a.optimizer.zero_grad()
        completion_logp(a.model, x, torch.ones_like(x), 2, 1.0).logp.sum().backward()
        a.optimizer.step()
        a.scheduler.step()
    step = ckpt.save_checkpoint(tmp_path, 1, actors=learners, trainer_state={"step": 1}, config_yaml="seed: 0\n",
                                keep_last=1)
    assert ckpt.saved_actors(step) == ["checker", "solver"]  # the frozen judge is its path: not saved
    cfg_hf = config(*ACTORS, "rollout.engine=hf")  # resume without more vLLM engines
    resumed = build_actors(cfg_hf, resolve_hardware(cfg_hf.hardware), None, step, lr_lambda)
    for a in learners:
        b = resumed[a.name]
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
            assert torch.equal(p, q), (a.name, name)
        sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k][m], sb[k][m]) for k in sa for m in sa[k])
        assert b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    assert not torch.equal(next(resumed["solver"].model.parameters()), next(resumed["checker"].model.parameters()))
    close_all(resumed)
