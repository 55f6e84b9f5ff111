"""Checkpoints under stress: every fsync of a commit counted, damaged and junk `step_*` entries, a resumed
branch against the one it abandoned, a changed actor set, pickles that would run code. Real saves of a
tiny real Llama (tests/unit/test_ckpt.py's helpers), real PPO saves on real text environments, the real
`rltool validate` in this process for what a user types."""
import os
import pickle
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rltool import cli
from rltool.ckpt import check_resumable, load_trainer_state, resolve_checkpoint, rng_state, save_checkpoint, save_final
from tests.unit.test_ckpt import actor, make_opt, save, tiny_model, tokenizer  # noqa: F401 (fixture)


def step(run, n):
    return run / "checkpoints" / f"step_{n:06d}"


# ---- one commit, fully fsynced, for every checkpoint of every loop ----

@pytest.fixture
def disk_log(monkeypatch):
    """Every fsync (the path its fd names) and every rename/replace, in order: what reaches the disk when."""
    events = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        real_rename(src, dst)
        events.append(("rename", str(src), str(dst)))

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", str(src), str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_committed_durably(events, final, latest=None):
    """Every file and directory of `final` was fsynced (in its temporary place) before the rename that
    named it; the parent after; then `latest` (its temp file fsynced, renamed, parent fsynced)."""
    final = str(final)
    (commit,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == final]
    tmp = events[commit][1]
    synced = {os.path.relpath(e[1], tmp) for e in events[:commit] if e[0] == "fsync" and (e[1] + "/").startswith(tmp + "/")}
    on_disk = {os.path.relpath(os.path.join(d, n), final) for d, dirs, files in os.walk(final) for n in dirs + files}
    assert on_disk | {"."} <= synced, sorted(on_disk | {"."} - synced)
    parent = os.path.dirname(final)
    assert ("fsync", parent) in events[commit + 1:], "the rename itself was never made durable"
    if latest:
        (swap,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(latest)]
        assert swap > commit and events[swap - 1] == ("fsync", events[swap][1]) and ("fsync", parent) in events[swap + 1:]


def test_every_lm_checkpoint_file_and_directory_is_fsynced_before_its_commit(tmp_path, tokenizer, disk_log):
    model = tiny_model()
    opt, sched = make_opt(model)
    ckpt = save(tmp_path, 1, model, tokenizer, opt, sched, rng=rng_state())
    assert_committed_durably(disk_log, ckpt, latest=tmp_path / "checkpoints" / "latest")


def test_final_models_are_fsynced_before_their_commit(tmp_path, tokenizer, disk_log):
    model = tiny_model()
    save_final(tmp_path, [actor(model, tokenizer)])
    assert_committed_durably(disk_log, tmp_path / "final")
    disk_log.clear()
    save_final(tmp_path, [actor(model, tokenizer)])  # replacing an older final/
    assert_committed_durably(disk_log, tmp_path / "final")


@pytest.fixture(scope="module")
def ppo_cfg():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rltool.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=cli.conf_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["output_dir=x", "algo=encoder_ppo", "actors=minilm_agent",
                                                       "env=frozenlake_text", "env.slippery=true", "trainer.num_envs=2"])
    return OmegaConf.to_object(cfg)


def ppo_save(run, it, cfg, envs=None):
    """A real PPO checkpoint: real environments mid-episode, a real Adam state (the agent is a stand-in module:
    save() stores its state_dict, whatever module it is)."""
    from rltool.envs.text_gym import make_vector_env
    from rltool.ppo_train import save as ppo_train_save

    envs = envs or make_vector_env(cfg.env, cfg.trainer.num_envs)
    obs, info = envs.reset(seed=0)
    for _ in range(3):
        obs, _, _, _, info = envs.step(np.array([1, 2]))
    agent = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(agent.parameters())
    agent(torch.ones(1, 3)).sum().backward()
    opt.step()
    n = cfg.trainer.num_envs
    return ppo_train_save(run, it, it * 8, agent, opt, envs, obs, info, np.zeros(n), np.zeros(n, dtype=int), cfg), envs


def test_every_ppo_checkpoint_file_and_directory_is_fsynced_before_its_commit(tmp_path, ppo_cfg, disk_log):
    ckpt, _ = ppo_save(tmp_path, 1, ppo_cfg)
    assert_committed_durably(disk_log, ckpt, latest=tmp_path / "checkpoints" / "latest")


# ---- pickles: nothing rltool loads from a run dir runs code ----

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_ppo_checkpoint_is_plain_data_and_its_env_states_resume_exactly(tmp_path, ppo_cfg):
    from rltool.envs.text_gym import make_vector_env
    from rltool.ppo_train import restore_envs

    ckpt, envs = ppo_save(tmp_path, 1, ppo_cfg)
    state = load_trainer_state(ckpt)  # weights_only=True: data only (numpy arrays allowed)
    fresh = make_vector_env(ppo_cfg.env, ppo_cfg.trainer.num_envs)
    fresh.reset(seed=123)
    restore_envs(fresh, state, ckpt)
    a, b = envs.step(np.array([0, 3])), fresh.step(np.array([0, 3]))  # same positions, same slipping RNG
    assert list(a[0]) == list(b[0]) and a[1].tolist() == b[1].tolist()
    assert state["step"] == 1


def test_an_env_state_signed_elsewhere_is_refused_unread(tmp_path, ppo_cfg, monkeypatch):
    from rltool.ppo_train import restore_envs

    run = tmp_path / "run"
    ckpt, envs = ppo_save(run, 1, ppo_cfg)
    state = load_trainer_state(ckpt)
    marker = tmp_path / "pwned"
    state["envs"][0] = pickle.dumps(Payload(marker))  # someone else's checkpoint: their pickle, their signature
    torch.save(state, ckpt / "trainer_state.pt")
    (ckpt / "checkpoint.json").unlink(missing_ok=True)  # a foreign checkpoint comes with whatever manifest it likes
    with pytest.raises(ValueError, match="not signed by this machine's rltool"):
        restore_envs(envs, state, ckpt)
    with pytest.raises(FileNotFoundError, match="environment|envs"):
        check_resumable(str(ckpt), zero3=False)
    assert not marker.exists()


def test_validate_never_unpickles_a_ppo_trainer_state(tmp_path, ppo_cfg, capsys, monkeypatch):
    run = tmp_path / "run"
    ckpt, _ = ppo_save(run, 1, ppo_cfg)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "envs": Payload(marker)}, ckpt / "trainer_state.pt")  # torch's own format
    (ckpt / "checkpoint.json").unlink(missing_ok=True)  # a foreign checkpoint comes with whatever manifest it likes
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rltool", "validate", "algo=encoder_ppo", "actors=minilm_agent", "env=frozenlake_text",
                                      f"resume={ckpt}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert not marker.exists(), "validate ran the checkpoint's pickle"
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "not a plain-data trainer state" in err, err


def test_a_deepspeed_shard_naming_code_is_refused_before_deepspeed_loads_it(tmp_path, tokenizer):
    model = tiny_model()
    opt, sched = make_opt(model)
    ckpt = save(tmp_path, 1, model, tokenizer, opt, sched, rng=rng_state())
    policy = ckpt / "actors" / "policy"
    (policy / "optimizer.pt").unlink()  # a ZeRO-3 checkpoint: DeepSpeed's shards instead
    shards = policy / "zero" / "state"
    shards.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"optimizer_state_dict": {"loss_scaler": Payload(marker)}}, shards / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (ckpt / "checkpoint.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"zero_pp_rank_0_mp_rank_00_optim_states.pt .*posix.system|os.system"):
        check_resumable(str(ckpt), zero3=True)
    assert not marker.exists()


# ---- a resumed branch never loses to the one it abandoned; nothing is replaced without being kept ----

def test_a_resumed_branch_wins_over_the_abandoned_ones_higher_steps(tmp_path, tokenizer):
    model = tiny_model()
    opt, sched = make_opt(model)
    for n in (1, 2, 3):
        save(tmp_path, n, model, tokenizer, opt, sched, keep_last=5, branch="first")
    # resumed from step 1 (its newer checkpoints were not moved aside: a launcher's second machine, say)
    save(tmp_path, 2, model, tokenizer, opt, sched, keep_last=5, branch="resumed")
    assert resolve_checkpoint(str(tmp_path)) == step(tmp_path, 2)
    assert load_trainer_state(step(tmp_path, 2))["branch"] == "resumed"
    save(tmp_path, 3, model, tokenizer, opt, sched, keep_last=5, branch="resumed")
    assert load_trainer_state(resolve_checkpoint(str(tmp_path)))["branch"] == "resumed"
    kept = sorted(p.parent.name + "/" + p.name for p in (tmp_path / "checkpoints").glob("superseded-*/step_*"))
    assert len(kept) == 2  # the first branch's steps 2 and 3: moved aside, not overwritten
    assert {load_trainer_state(p)["branch"] for p in (tmp_path / "checkpoints").glob("superseded-*/step_*")} == {"first"}


# ---- damaged checkpoints: named at the check, the newest intact one resumed ----

def damage_model(ckpt):
    f = ckpt / "actors" / "policy" / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def damage_actor(ckpt):
    shutil.rmtree(ckpt / "actors" / "policy")


def damage_state(ckpt):
    f = ckpt / "trainer_state.pt"
    f.write_bytes(f.read_bytes()[:200])


@pytest.mark.parametrize("harm,why", [(damage_model, "model.safetensors has"), (damage_actor, "is missing"),
                                      (damage_state, "trainer_state.pt has")])
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no-manifest"])
def test_a_damaged_newest_checkpoint_is_skipped_with_one_line(tmp_path, tokenizer, capsys, harm, why, manifest):
    model = tiny_model()
    opt, sched = make_opt(model)
    save(tmp_path, 1, model, tokenizer, opt, sched, rng=rng_state())
    newest = save(tmp_path, 2, model, tokenizer, opt, sched, rng=rng_state())
    harm(newest)
    if not manifest:  # a checkpoint from before manifests: headers, actors and the state itself are checked
        for d in (step(tmp_path, 1), newest):
            (d / "checkpoint.json").unlink(missing_ok=True)
        why = {"model.safetensors has": "model.safetensors is damaged", "is missing": "holds no actor",
               "trainer_state.pt has": "damaged trainer state"}[why]
    capsys.readouterr()
    assert check_resumable(str(tmp_path), zero3=False, actors=["policy"]) == step(tmp_path, 1)
    lines = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert len(lines) == 1 and lines[0].startswith("resume: skipped step_000002: ") and why in lines[0], lines
    with pytest.raises(FileNotFoundError, match=f"resume={newest}: .*{why}") as e:
        check_resumable(str(newest), zero3=False, actors=["policy"])  # named explicitly: refused, not replaced
    assert "\n" not in str(e.value) and "foreign" not in str(e.value) and "plain-data" not in str(e.value)


# ---- junk named step_*: ignored, named, never a crash ----

def test_junk_named_step_is_left_alone_and_never_breaks_a_save(tmp_path, tokenizer, capsys):
    model = tiny_model()
    opt, sched = make_opt(model)
    root = tmp_path / "checkpoints"
    save(tmp_path, 1, model, tokenizer, opt, sched, keep_last=1)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(step(tmp_path, 1), elsewhere / "step_000001")
    (root / "step_000000").symlink_to(elsewhere / "step_000001")  # a symlinked old checkpoint
    (root / "step_000007").write_text("notes")  # a regular file
    (root / "step_000008").symlink_to(tmp_path / "nowhere")  # dangling
    (root / "step_000009").symlink_to(root / "step_000009")  # a loop
    for n in (2, 3):
        save(tmp_path, n, model, tokenizer, opt, sched, keep_last=1)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step_000000", "step_000003", "step_000007", "step_000008", "step_000009"], names
    assert (elsewhere / "step_000001" / "trainer_state.pt").is_file()  # what the symlink pointed at: untouched
    said = capsys.readouterr().out
    for junk in ("step_000000", "step_000007", "step_000008", "step_000009"):
        assert said.count(f"{junk} is not a checkpoint rltool wrote") == 1, said
    assert resolve_checkpoint(str(tmp_path)) == step(tmp_path, 3)
    # resume from an older step while junk sits beside it: the junk is not a newer checkpoint to move
    from rltool.run_dir import newer_checkpoints

    assert newer_checkpoints(step(tmp_path, 3)) == []


# ---- the actors of a resumed run are the ones saved ----

def test_resume_with_a_changed_actor_set_is_one_line_naming_added_and_removed(tmp_path, tokenizer):
    model = tiny_model()
    opt, sched = make_opt(model)
    ckpt = save(tmp_path, 1, model, tokenizer, opt, sched, rng=rng_state())
    with pytest.raises(FileNotFoundError) as e:
        check_resumable(str(tmp_path), zero3=False, actors=["solver", "checker"])
    assert "\n" not in str(e.value) and "added checker, solver; removed policy" in str(e.value)
    # a checkpoint from before named actors (model/ directly in step_N/) is the actor `policy` only
    for f in (ckpt / "actors" / "policy").iterdir():
        f.rename(ckpt / f.name)
    (ckpt / "actors" / "policy").rmdir()
    (ckpt / "actors").rmdir()
    (ckpt / "checkpoint.json").unlink(missing_ok=True)
    assert check_resumable(str(tmp_path), zero3=False, actors=["policy"]) == ckpt
    with pytest.raises(FileNotFoundError, match="added solver; removed policy"):
        check_resumable(str(tmp_path), zero3=False, actors=["solver"])
    from rltool.ckpt import actor_dir

    assert not actor_dir(ckpt, "solver").exists()  # never the policy's weights under another actor's name


def test_validate_refuses_a_changed_actor_set_before_models_load(tmp_path, tokenizer, capsys, monkeypatch):
    model = tiny_model()
    opt, sched = make_opt(model)
    save(tmp_path / "run", 1, model, tokenizer, opt, sched, rng=rng_state())
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rltool", "validate", "env=collab_arithmetic", f"resume={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "added checker, solver; removed policy" in err, err
