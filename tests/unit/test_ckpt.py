"""Checkpoint round trips on a tiny real Llama with a real tokenizer, AdamW and LambdaLR."""
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rltool.actors.embedded import materialize
from rltool.ckpt import (actor_dir, load_optimizer, load_scheduler, load_trainer_state, model_dir, resolve_checkpoint,
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


def actor(model, tokenizer, opt=None, sched=None, name="policy"):
    """What train.py hands save_checkpoint for each trainable actor."""
    return SimpleNamespace(name=name, model=model, tokenizer=tokenizer, optimizer=opt, scheduler=sched)


def save(run_dir, step, model, tokenizer, opt, sched, keep_last=2, **state):
    return save_checkpoint(run_dir, step, actors=[actor(model, tokenizer, opt, sched)],
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

    policy = actor_dir(ckpt, "policy")
    restored = LlamaForCausalLM.from_pretrained(model_dir(policy))
    opt2, sched2 = make_opt(restored)
    load_optimizer(policy, opt2)
    load_scheduler(policy, sched2)
    state = load_trainer_state(ckpt)
    set_rng_state(state["rng"])
    after_restore = draw()

    assert state["step"] == 2 and state["data_pos"] == 17
    assert after_restore[:2] == after_save[:2]
    assert_close(after_restore[2], after_save[2])
    assert sched2.last_epoch == sched.last_epoch == 2
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert (ckpt / "config.yaml").read_text() == CONFIG_YAML
    assert AutoTokenizer.from_pretrained(model_dir(policy)).encode("12 + 30") == tokenizer.encode("12 + 30")
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
    save_final(tmp_path, [actor(model, tokenizer)])
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    final = save_final(tmp_path, [actor(model, tokenizer)])
    assert final == tmp_path / "final"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert_close(LlamaForCausalLM.from_pretrained(final / "policy").lm_head.weight, model.lm_head.weight)


# ---- faults (#14 a-c): a real SIGKILL at each phase of a real checkpoint write, a really corrupted `latest` ----

def killed_save(run_dir, tokenizer, step, point, keep_last=2):
    """Save `step` in a forked process that RLTOOL_FAULT SIGKILLs at `point`; returns its exit code."""
    import multiprocessing as mp

    def child():
        os.environ["RLTOOL_FAULT"] = point
        model = tiny_model()
        opt, sched = make_opt(model)
        save(run_dir, step, model, tokenizer, opt, sched, keep_last=keep_last, rng=rng_state())
        os._exit(0)  # reached only when the fault point was never hit

    p = mp.get_context("fork").Process(target=child)  # torch is imported already: no second start-up
    p.start()
    p.join(120)
    return p.exitcode


def assert_resumes_from(run_dir, step):
    ckpt = resolve_checkpoint(str(run_dir))
    assert ckpt.name == f"step_{step:06d}"
    assert load_trainer_state(ckpt)["step"] == step
    policy = actor_dir(ckpt, "policy")
    LlamaForCausalLM.from_pretrained(model_dir(policy))  # nothing half-written is loaded
    load_optimizer(policy, make_opt(tiny_model())[0])
    return ckpt


@pytest.mark.parametrize("point,newest", [("ckpt:actors", 1), ("ckpt:trainer_state", 1), ("ckpt:rename", 2),
                                          ("ckpt:latest", 2), ("ckpt:prune", 2)])
def test_sigkill_at_each_phase_of_a_save_leaves_a_resumable_checkpoint(tmp_path, tokenizer, point, newest):
    from rltool.faults import POINTS

    assert point in POINTS
    model = tiny_model()
    opt, sched = make_opt(model)
    save(tmp_path, 1, model, tokenizer, opt, sched, keep_last=1, rng=rng_state())
    assert killed_save(tmp_path, tokenizer, 2, point, keep_last=1) == -9  # really killed there
    assert_resumes_from(tmp_path, newest)  # the newest complete one: committed means renamed
    # keep_last=1: the old checkpoint was never pruned before the new one was committed
    assert (tmp_path / "checkpoints" / "step_000001").is_dir() or newest == 2
    save(tmp_path, 3, model, tokenizer, opt, sched, keep_last=1, rng=rng_state())  # the next save cleans up
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000003"]


@pytest.mark.parametrize("latest", ["", "garbage\n", "\x00\xff", "step_000009\n", "step_000001\n", None])
def test_corrupt_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, tokenizer, capsys, latest):
    model = tiny_model()
    opt, sched = make_opt(model)
    save(tmp_path, 1, model, tokenizer, opt, sched, rng=rng_state())
    save(tmp_path, 2, model, tokenizer, opt, sched, rng=rng_state())
    root = tmp_path / "checkpoints"
    partial = root / "step_000003"  # a step dir without its trainer state is not complete
    partial.mkdir()
    if latest is None:
        (root / "latest").unlink()
    else:
        (root / "latest").write_bytes(latest.encode("latin-1"))
    capsys.readouterr()
    assert_resumes_from(tmp_path, 2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "using the newest complete checkpoint, step_000002" in lines[0]


def crash_on_second_rename(monkeypatch):
    """The first os.rename happens, the second raises: a crash between the two renames of a replace."""
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("simulated crash between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)


def test_crash_between_the_two_renames_of_a_replace_keeps_the_only_copy(tmp_path, tokenizer, monkeypatch):
    model = tiny_model()
    opt, sched = make_opt(model)
    save(tmp_path, 1, model, tokenizer, opt, sched, keep_last=1, rng=rng_state())
    crash_on_second_rename(monkeypatch)  # step 1 saved again (another branch): old -> superseded (done), new -> old (crash)
    with pytest.raises(OSError):
        save(tmp_path, 1, model, tokenizer, opt, sched, keep_last=1, rng=rng_state())
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert not (root / "step_000001").exists()  # the moment the issue describes: latest names nothing
    save(tmp_path, 2, model, tokenizer, opt, sched, keep_last=1, rng=rng_state())  # must not delete the copy aside
    (kept,) = root.glob("superseded-*/step_000001")
    assert (kept / "trainer_state.pt").is_file()
    assert_resumes_from(tmp_path, 2)


def test_save_final_twice_crashing_between_the_renames_puts_the_old_final_back(tmp_path, tokenizer, monkeypatch):
    model = tiny_model()
    save_final(tmp_path, [actor(model, tokenizer)])
    crash_on_second_rename(monkeypatch)  # old final -> aside (done), new -> final (crash)
    with pytest.raises(OSError):
        save_final(tmp_path, [actor(model, tokenizer)])
    monkeypatch.undo()
    assert not (tmp_path / "final").exists()
    save_final(tmp_path, [actor(model, tokenizer)])  # the debris is cleared; the copy aside was put back first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    LlamaForCausalLM.from_pretrained(tmp_path / "final" / "policy")


def test_trainer_state_is_plain_data_and_foreign_pickles_are_refused(tmp_path, tokenizer):
    import pickle

    model = tiny_model()
    opt, sched = make_opt(model)
    ckpt = save(tmp_path, 1, model, tokenizer, opt, sched, rng=rng_state(), sampler={"epoch": 0, "index": 3})
    torch.load(ckpt / "trainer_state.pt", weights_only=True)  # no numpy, no classes: torch's safe loader reads it
    evil = tmp_path / "evil" / "checkpoints" / "step_000001"
    evil.mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(evil / "trainer_state.pt", "wb") as f:
        pickle.dump({"step": 1, "x": Payload()}, f)
    with pytest.raises(ValueError, match="not a plain-data trainer state"):
        load_trainer_state(evil)
    assert not (tmp_path / "pwned").exists()


def test_every_rank_gets_its_own_rng_state_back():
    """Two real gloo ranks draw different numbers; after rng_states -> set_rng_states each draws its own again."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    port = 29500 + os.getpid() % 1000
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_rng, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    got = dict(results.get(timeout=5) for _ in procs)
    assert all(p.exitcode == 0 for p in procs)
    assert got[0][0] == got[0][1] and got[1][0] == got[1][1] and got[0][0] != got[1][0]


def _rank_rng(rank, port, results):
    import torch.distributed as tdist

    from rltool.ckpt import rng_states, set_rng_states

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    random.seed(rank)
    np.random.seed(rank)
    saved = rng_states()
    path = f"/tmp/rng_states_{port}.pt"
    if rank == 0:  # as in a checkpoint: rank 0 writes, every rank reads that file
        torch.save(saved, path)
    tdist.barrier()
    first = draw()
    set_rng_states(torch.load(path, weights_only=True))
    again = draw()
    tdist.barrier()
    if rank == 0:
        os.unlink(path)
    results.put((rank, ((first[0], first[1], first[2].tolist()), (again[0], again[1], again[2].tolist()))))
    tdist.destroy_process_group()


def test_a_fault_point_counts_its_calls_and_a_bad_count_is_named(monkeypatch):
    from rltool import faults

    monkeypatch.setattr(faults, "_calls", {})
    monkeypatch.setenv("RLTOOL_FAULT", "ckpt:rename@3")
    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))  # the signal, not the process
    for _ in range(4):
        faults.point("ckpt:rename")
        faults.point("ckpt:latest")  # other points neither fire nor count
    assert killed == [faults.signal.SIGKILL] and faults._calls == {"ckpt:rename": 4}
    monkeypatch.setenv("RLTOOL_FAULT", "ckpt:rename@x")
    with pytest.raises(ValueError, match="RLTOOL_FAULT='ckpt:rename@x': expected <point> or <point>@<n>"):
        faults.point("ckpt:rename")
