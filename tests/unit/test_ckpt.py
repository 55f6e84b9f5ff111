"""Checkpoint round trips on a tiny real Llama with a real tokenizer, AdamW and LambdaLR."""
import os
import random

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rltool.actors.embedded import materialize
from rltool.ckpt import (load_optimizer, load_scheduler, load_trainer_state, model_dir, resolve_checkpoint,
                         rng_state, save_checkpoint, save_final, set_rng_state)

CONFIG_YAML = "algo:\n  name: grpo\nseed: 7\n"
IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])  # (B=1, T=6) fixed batch so two runs see the same data


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))


def tiny_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=128)
    return LlamaForCausalLM(cfg)


def make_opt(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return opt, sched


def train_step(model, opt, sched):
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def save(run_dir, step, model, tokenizer, opt, sched, keep_last=2, **state):
    return save_checkpoint(run_dir, step, model=model, tokenizer=tokenizer, optimizer=opt, scheduler=sched,
                           trainer_state={"step": step, **state}, config_yaml=CONFIG_YAML, keep_last=keep_last)


def draw():
    return random.random(), np.random.rand(), torch.rand(3)


def test_round_trip_continues_exactly(tmp_path, tokenizer):
    model = tiny_model()
    opt, sched = make_opt(model)
    train_step(model, opt, sched)
    train_step(model, opt, sched)
    ckpt = save(tmp_path, 2, model, tokenizer, opt, sched, data_pos=17, rng=rng_state())
    after_save = draw()

    restored = LlamaForCausalLM.from_pretrained(model_dir(ckpt))
    opt2, sched2 = make_opt(restored)
    load_optimizer(ckpt, opt2)
    load_scheduler(ckpt, sched2)
    state = load_trainer_state(ckpt)
    set_rng_state(state["rng"])
    after_restore = draw()

    assert state["step"] == 2 and state["data_pos"] == 17
    assert after_restore[:2] == after_save[:2]
    assert_close(after_restore[2], after_save[2])
    assert sched2.last_epoch == sched.last_epoch == 2
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert (ckpt / "config.yaml").read_text() == CONFIG_YAML
    assert AutoTokenizer.from_pretrained(model_dir(ckpt)).encode("12 + 30") == tokenizer.encode("12 + 30")
    # One more step from the checkpoint lands on the same weights as the uninterrupted run: this
    # fails if Adam's moments, its step count or the LR schedule were not restored.
    train_step(model, opt, sched)
    train_step(restored, opt2, sched2)
    for (name, p), p2 in zip(model.named_parameters(), restored.parameters()):
        assert_close(p2, p, msg=name)


def test_keep_last_prunes_and_latest_points_at_newest(tmp_path, tokenizer):
    model = tiny_model()
    opt, sched = make_opt(model)
    for step in range(1, 5):
        save(tmp_path, step, model, tokenizer, opt, sched, keep_last=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000003", "step_000004"]
    assert (root / "latest").read_text().strip() == "step_000004"


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, tokenizer, monkeypatch):
    model = tiny_model()
    opt, sched = make_opt(model)
    first = save(tmp_path, 1, model, tokenizer, opt, sched)
    real_rename = os.rename

    def crash(src, dst):
        if ".tmp-step_000002" in str(src):
            raise OSError("simulated crash before the rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, 2, model, tokenizer, opt, sched)
    monkeypatch.undo()

    root = tmp_path / "checkpoints"
    assert resolve_checkpoint(str(tmp_path)) == first
    assert load_trainer_state(first)["step"] == 1
    assert not (root / "step_000002").exists()
    assert len(list(root.glob(".tmp-step_000002-*"))) == 1

    save(tmp_path, 3, model, tokenizer, opt, sched)
    assert not list(root.glob(".tmp-*"))
    assert resolve_checkpoint(str(tmp_path)) == root / "step_000003"


def test_resolve_checkpoint_accepts_run_ckpt_and_step_dirs(tmp_path, tokenizer):
    model = tiny_model()
    opt, sched = make_opt(model)
    save(tmp_path, 1, model, tokenizer, opt, sched)
    newest = save(tmp_path, 2, model, tokenizer, opt, sched)
    older = tmp_path / "checkpoints" / "step_000001"
    assert resolve_checkpoint(str(tmp_path)) == newest
    assert resolve_checkpoint(str(tmp_path / "checkpoints")) == newest
    assert resolve_checkpoint(str(older)) == older


def test_resolve_checkpoint_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"resume={missing}: no such directory"):
        resolve_checkpoint(str(missing))
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    with pytest.raises(FileNotFoundError, match=f"resume={empty_run}: no checkpoints/latest found; expected a run"):
        resolve_checkpoint(str(empty_run))


def test_save_final_replaces_previous(tmp_path, tokenizer):
    model = tiny_model()
    save_final(tmp_path, model, tokenizer)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    final = save_final(tmp_path, model, tokenizer)
    assert final == tmp_path / "final"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert_close(LlamaForCausalLM.from_pretrained(final).lm_head.weight, model.lm_head.weight)
