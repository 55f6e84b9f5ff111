"""Config fuzz and run-directory safety (#14 i, j): a user mistake is one line, exit 2, before any
model loads; a fresh run never writes into another run's directory; a resume never overwrites
newer checkpoints. The CLI runs in this process (the real `rltool.cli.main`, as `rltool validate`
would run it) so that 60+ command lines cost seconds, not a torch import each."""
import multiprocessing as mp
import sys
from pathlib import Path

import pytest

from rltool import cli
from rltool.run_dir import CLAIM, claim_run_dir, move_newer_aside, newer_checkpoints, remove_if_unused


def checkpoint(run, step, zero3=False):
    """What ckpt.save_checkpoint leaves that resume's checks read (a real trainer state and optimizer file, a
    model/ without weights: they load only in train())."""
    import torch

    d = run / "checkpoints" / f"step_{step:06d}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "config.json").write_text("{}")
    torch.save({"step": step}, d / "trainer_state.pt")
    (d / "zero").mkdir() if zero3 else torch.save({}, d / "optimizer.pt")
    (run / "checkpoints" / "latest").write_text(f"step_{step:06d}\n")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    checkpoint(root / "zero3_run", 2, zero3=True)
    checkpoint(root / "two_steps", 2)
    checkpoint(root / "two_steps", 4)
    (root / "not_a_run").mkdir()
    (root / "a_file").write_text("x")
    (root / "rewards.py").write_text("def f(:\n")
    return root


REPO = Path(__file__).resolve().parents[2]

BAD = [  # (overrides, what the one line must say)
    # unknown group options: the valid ones, never the schema's base_<group>
    (["algo=nope"], "algo=nope: unknown algo option; valid: agrl, dapo, dr_grpo, encoder_ppo, erl, grpo"),
    (["algo=ppo", "env=frozenlake_text"], "algo=ppo: is now algo=encoder_ppo (PPO for encoder agents"),
    (["env=collab", "env.task=collab_gsm8k"], "env.task='collab_gsm8k': must be a single-turn environment; valid: "),
    (["env=parallel", "env.task=dataset", "env.path=missing.jsonl"], "env.path='missing.jsonl': no such file"),
    (["env=nope"], "env=nope: unknown env option; valid:"),
    (["reward=nope"], "reward=nope: unknown reward option; valid:"),
    (["hardware=nope"], "hardware=nope: unknown hardware option; valid:"),
    (["algo=GRPO"], "algo=GRPO: unknown algo option"),
    # unknown keys and typos
    (["algo.group_sise=3"], "algo.group_sise=3: Key 'group_sise' not in 'AlgoConfig'"),
    (["algo.clip_eps_lo=0.1"], "did you mean clip_eps_low?"),
    (["trainer.lrr=1e-5"], "trainer.lrr=1e-5: Key 'lrr' not in 'TrainerConfig'; did you mean lr?"),
    (["trainer.max_step=3"], "did you mean max_steps?"),
    (["rollout.max_new_token=3"], "did you mean max_new_tokens?"),
    (["eval.sizee=3"], "did you mean size?"),
    (["reward.sucess=x"], "did you mean success?"),
    (["hardware.zero_stag=3"], "did you mean zero_stage?"),
    (["trainer.nope.deeper=1"], "trainer.nope.deeper=1: Key 'nope' not in 'TrainerConfig'"),
    (["nokey=3"], "nokey"),
    # wrong types
    (["trainer.group_size=x"], "trainer.group_size=x: Value 'x' of type 'str' could not be converted to Integer"),
    (["trainer.lr=fast"], "trainer.lr=fast: Value 'fast' of type 'str' could not be converted to Float"),
    (["trainer.max_steps=1.5"], "trainer.max_steps=1.5: Value '1.5' of type 'float' could not be converted to Integer"),
    (["seed=abc"], "seed=abc: Value 'abc'"),
    (["rollout.temperature=hot"], "rollout.temperature=hot"),
    (["eval.enabled=maybe"], "eval.enabled=maybe"),
    (["trainer.max_steps=[1,2]"], "trainer.max_steps=[1,2]"),
    (["algo.erl.memory_size=many"], "algo.erl.memory_size=many"),
    # unparseable overrides
    (["trainer.lr=["], "trainer.lr=[: cannot parse this override"),
    (["trainer.lr='1"], "cannot parse this override"),
    # out-of-range values
    (["trainer.grad_clip=-1"], "trainer.grad_clip=-1.0"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0.0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.prompts_per_step=0"], "trainer.prompts_per_step=0"),
    (["trainer.keep_last=0"], "trainer.keep_last=0"),
    (["trainer.save_every=-1"], "trainer.save_every=-1: must be >= 0"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps=-1"),
    (["trainer.lr=-1e-5"], "trainer.lr=-1e-05"),
    (["trainer.group_size=1"], "trainer.group_size=1: must be >= 2"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens=0"),
    (["rollout.max_prompt_len=0"], "rollout.max_prompt_len=0"),
    (["rollout.temperature=-1"], "rollout.temperature=-1.0"),
    (["rollout.top_p=2"], "rollout.top_p=2.0"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens=0"),
    (["eval.size=-1"], "eval.size=-1"),
    (["algo.clip_eps_low=-0.1"], "algo.clip_eps_low=-0.1: must be >= 0"),
    (["algo.kl_coef=-1"], "algo.kl_coef=-1.0"),
    (["algo.iterations=0"], "algo.iterations=0"),
    (["algo.mismatch_cap=1"], "algo.mismatch_cap=1.0: must be > 1"),
    (["hardware=cpu_zero3", "hardware.main_process_port=70000"], "hardware.main_process_port=70000"),
    # non-finite numbers: inf passes every `> 0` check and trains NaN weights; nan fails them all
    (["trainer.lr=inf"], "trainer.lr=inf: must be a finite number"),
    (["reward.length_penalty=nan"], "reward.length_penalty=nan: must be a finite number"),
    (["reward.terms=[{{name: format, weight: nan}}]"], "reward.terms[0].weight=nan: must be a finite number"),
    (["actors.lr=-inf"], "actors.policy.lr=-inf: must be a finite number"),
    (["algo=encoder_ppo", "actors=minilm_agent", "env=taxi_text", "algo.ppo.ent_coef=inf"], "algo.ppo.ent_coef=inf: must be a finite number"),
    (["rollout.temperature=inf"], "rollout.temperature=inf: must be a finite number"),
    # registry names and choices
    (["algo.advantage=foo"], "algo.advantage='foo': unknown; valid:"),
    (["algo.loss=foo"], "algo.loss='foo': unknown; valid:"),
    (["algo.kl_estimator=k9"], "algo.kl_estimator='k9': unknown; valid: k1, k2, k3"),
    (["rollout.engine=sglang"], "rollout.engine='sglang': must be one of vllm, hf"),
    (["reward.success=nope"], "reward.success='nope': unknown reward; valid:"),
    (["trainer.logger=nope"], "'nope' is not a logger"),
    (["env.name=nope"], "env.name='nope': unknown environment"),
    # cross-field contradictions
    (["trainer.micro_batch_size=5"], "trainer.micro_batch_size=5: must divide prompts_per_step*group_size"),
    (["hardware.num_processes=2"], "hardware.num_processes=2: more than one process trains with DeepSpeed ZeRO-3"),
    (["hardware=cpu_zero3", "rollout.engine=hf"], "rollout.engine=hf: HF generate does not run on ZeRO-3"),
    (["hardware=cpu_zero3", "trainer.prompts_per_step=3"], "must be divisible by hardware.num_processes=2"),
    # AGRL: its algorithm and environment go together; hidden-state vectors need unsharded projections
    (["algo=agrl"], "algo.rollout='agrl' (algo=agrl) does not play env gsm8k's single_turn episodes, only article ones"),
    (["env=article_curriculum"], "env article_curriculum's article episodes, only single_turn, multi_actor ones; "
                                 "rollouts that play article: agrl"),
    (["env=dataset", "env.path={repo}/examples/own_task/sums.jsonl", "env.digits=3"],
     "env.digits=3: not a key of environment dataset; its keys: eval_only, eval_path"),
    (["algo=agrl", "env=article_curriculum", "algo.agrl.embedding=hidden", "hardware=cpu_zero3"],
     "algo.agrl.embedding='hidden': not under ZeRO-3"),
    (["algo=agrl", "env=article_curriculum", "algo.agrl.baseline=base"], "algo.agrl.baseline='base': must be one of"),
    (["algo=agrl", "env=article_curriculum", "env.pair_unit=words"], "env.pair_unit='words': must be one of auto"),
    # templates with unknown placeholders
    (["algo=erl", "algo.erl.retry_template='{{prompt}} {{nope}}'"], "algo.erl.retry_template"),
    (["algo=erl", "algo.erl.reflection_template='{{attempt}} {{bogus}}'"], "algo.erl.reflection_template"),
    # bad resume= paths, another profile's checkpoint, an older checkpoint of a run
    (["resume={root}/missing"], "resume={root}/missing: no such directory"),
    # a sweep job's dir holds `=` and `,`: read as a path, not as override syntax
    (["resume={root}/0-trainer.lr=1e-4,seed=1"], "resume={root}/0-trainer.lr=1e-4,seed=1: no such directory"),
    (["resume={root}/a_file"], "resume={root}/a_file: no such directory"),
    (["resume={root}/not_a_run"], "resume={root}/not_a_run: no checkpoints/latest found"),
    (["resume={root}/zero3_run", "hardware=cpu"], "saved by a ZeRO-3 run, resumed as one process"),
    (["resume={root}/two_steps", "hardware=cpu_zero3"], "saved by a one process run, resumed as ZeRO-3"),
    (["resume={root}/two_steps/checkpoints/step_000009"], "resume={root}/two_steps/checkpoints/step_000009: no such directory"),
    # a reward file that does not import
    (["reward.module={root}/rewards.py"], "SyntaxError at line 1"),
]


def run_cli(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # Hydra's outputs/ land here
    monkeypatch.setattr(sys, "argv", ["rltool", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_malformed_command_line_is_one_line_exit_2(overrides, message, runs, capsys, monkeypatch, tmp_path):
    argv = ["validate", *(o.format(root=runs, repo=REPO) for o in overrides)]
    code, out = run_cli(argv, capsys, monkeypatch, tmp_path)
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2, out.err
    assert 1 <= len(lines) <= 3 and lines[0].startswith("rltool: config error: "), out.err
    assert message.format(root=runs) in out.err, out.err
    assert "Traceback" not in out.out + out.err and "base_" not in out.err


def test_the_fuzz_has_at_least_60_command_lines():
    assert len(BAD) >= 60


def test_two_runs_started_in_the_same_second_get_different_directories(tmp_path):
    wanted = tmp_path / "grpo-gsm8k-20260101-120000"  # the default name: one-second resolution
    ctx = mp.get_context("fork")  # real concurrent processes racing for one name
    with ctx.Pool(4) as pool:
        got = pool.map(claim_run_dir, [wanted] * 4)
    assert len(set(got)) == 4 and wanted in got
    assert all((d / CLAIM).is_file() for d in got)


def test_a_fresh_run_never_writes_into_a_directory_holding_a_run(tmp_path):
    old = tmp_path / "run"
    checkpoint(old, 3)  # a run from before claims existed: no .rltool-run, but checkpoints/
    assert claim_run_dir(old) == tmp_path / "run-2"
    empty = tmp_path / "fresh"
    empty.mkdir()  # Hydra makes the directory (and .hydra/) before rltool runs: still free
    assert claim_run_dir(empty) == empty


def test_an_unused_run_dir_is_removed_and_anything_else_kept(tmp_path):
    def hydra_dir(name, log="", extra=None):
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (d / ".hydra" / f).write_text("x: 1\n")
        (d / "cli.log").write_text(log)
        for f, text in (extra or {}).items():
            (d / f).write_text(text)
        return d

    unused = hydra_dir("validate")
    assert remove_if_unused(unused) and not unused.exists()
    mine = claim_run_dir(hydra_dir("refused"))  # refused by the memory plan after this process claimed it
    (mine / "config.yaml").write_text("x: 1\n")
    (mine / "logs").mkdir()
    (mine / "logs" / "rank0.log").write_text("")
    assert remove_if_unused(mine) and not mine.exists()
    kept = [hydra_dir("logged", log="a warning\n"), hydra_dir("run", extra={"metrics.jsonl": "{}\n"}),
            hydra_dir("other", extra={CLAIM: "pid 1 at 2026-01-01 00:00:00\n"}),
            hydra_dir("config_unclaimed", extra={"config.yaml": "x: 1\n"})]
    (hydra_dir("notes") / ".hydra" / "notes.txt").write_text("mine")
    for d in [*kept, tmp_path / "notes"]:
        assert not remove_if_unused(d) and d.is_dir(), d


def test_resume_from_an_older_step_keeps_the_newer_checkpoints(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    older, newer = checkpoint(run, 2), checkpoint(run, 4)
    assert newer_checkpoints(newer) == [] and newer_checkpoints(older) == [newer]
    aside = move_newer_aside(older)
    assert not newer.exists() and (aside / "step_000004" / "trainer_state.pt").is_file()
    assert aside.parent == run / "checkpoints" and not aside.name.startswith(("step_", ".tmp-"))  # never pruned
    assert newer_checkpoints(older) == []  # the resumed one is now the newest: saves go on from it


def test_a_corrupt_or_foreign_trainer_state_is_one_line_before_models_load(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    checkpoint(run, 2)
    (run / "checkpoints" / "step_000002" / "trainer_state.pt").write_bytes(b"\x80\x04garbage")
    code, out = run_cli(["validate", "hardware=cpu", f"resume={run}"], capsys, monkeypatch, tmp_path)
    assert code == 2 and len(out.err.strip().splitlines()) == 1, out.err
    assert "not a plain-data trainer state" in out.err


def test_train_command_claims_its_directory_and_moves_newer_checkpoints_aside(tmp_path, capsys):
    from types import SimpleNamespace

    taken = tmp_path / "taken"
    checkpoint(taken, 1)
    fresh = SimpleNamespace(resume=None, output_dir=str(taken), algo=SimpleNamespace(loop="lm"))
    cli.own_run_dir(fresh)
    assert fresh.output_dir == str(tmp_path / "taken-2")
    assert capsys.readouterr().out.strip() == f"run dir: {taken} holds another run; writing to {tmp_path / 'taken-2'}"
    older = taken / "checkpoints" / "step_000001"
    checkpoint(taken, 5)
    resumed = SimpleNamespace(resume=str(older), output_dir="ignored", algo=SimpleNamespace(loop="ppo"))
    cli.own_run_dir(resumed)
    assert not (taken / "checkpoints" / "step_000005").exists() and len(list((taken / "checkpoints").glob("superseded-*/step_000005"))) == 1
    assert "they are kept in" in capsys.readouterr().out


def test_wandb_logger_without_wandb_is_refused_at_validation(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    # wandb is installed here; a machine without it is what is simulated (the one thing that cannot run here)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, out = run_cli(["validate", "trainer.logger=wandb"], capsys, monkeypatch, tmp_path)
    assert code == 2 and out.err.strip() == ("rltool: config error: trainer.logger=['wandb']: wandb is not installed; "
                                             "pip install wandb, or use trainer.logger=tensorboard or none")
