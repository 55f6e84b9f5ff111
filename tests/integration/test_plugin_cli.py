"""A user's task as a plugin: one file outside the repository registers an environment and an algorithm's
rollout, each with its own config keys, and a reward; `rltool train plugins=[that file]` trains with all three
(real vLLM, real model), and the plugin's keys are checked like rltool's own."""
import subprocess
import sys

import pytest

from tests.integration.helpers import TINY, read_jsonl, rltool

PLUGIN = '''
from dataclasses import dataclass, field

from rltool.algos.rollouts import GroupRollout, register_rollout
from rltool.config import EnvConfig
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.single_turn import SingleTurnEnv
from rltool.rewards import reward


@dataclass
class SayWordConfig(EnvConfig):
    words: list[str] = field(default_factory=lambda: ["yes", "no", "blue", "seven"])


@register_env("say_word", config=SayWordConfig)
class SayWord(SingleTurnEnv):
    name = "say_word"

    def __init__(self, cfg: SayWordConfig):
        rows = [Example(f"say-{w}-{i}", f"Reply with the single word: {w}", w) for i, w in enumerate(cfg.words * 4)]
        super().__init__(cfg, train=rows, eval=rows[:4])


@reward("said_word")
def said_word(completion, example):
    return float(example.answer in completion.lower())


@dataclass
class CountedConfig:
    mark: float = 1.0


@register_rollout("counted", config=CountedConfig)
class CountedRollout(GroupRollout):
    """The GRPO rollout, plus a metric saying it ran, valued algo.counted.mark."""

    def __call__(self, step):
        samples, metrics = super().__call__(step)
        metrics["plugin/counted_rollouts"] = self.ctx.cfg.algo.counted.mark
        return samples, metrics
'''


@pytest.mark.slow
def test_plugin_env_reward_and_rollout_train_one_step(tmp_path):
    plugin = tmp_path / "elsewhere" / "say_word.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    run = tmp_path / "run"
    task = [f"plugins=[{plugin}]", "env.name=say_word", "reward.terms=[{name: said_word, weight: 1.0}]",
            "reward.success=said_word", "algo.rollout=counted"]
    for typo, message in (("env.wordz=[a]", "env.wordz=[a]: Key 'wordz' not in 'EnvConfig'; did you mean words?"),
                          ("algo.counted.mrk=2", "algo.counted.mrk=2: Key 'mrk' not in 'CountedConfig'; did you mean mark?"),
                          ("env.name=gsm8k", "env.words=['yes', 'no']: not a key of environment gsm8k; its keys: eval_only, eval_size, "
                           "instruction, mix, name, seed, source, system_prompt, train_size")):
        bad = subprocess.run([sys.executable, "-m", "rltool", "validate", *task, "env.words=[yes,no]", typo],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and bad.stderr.strip() == f"rltool: config error: {message}", bad.stderr
    rltool("train", *TINY, *task, "env.words=[yes,no]", "algo.counted.mark=2.5", "trainer.max_steps=1",
           "eval.enabled=false", f"hydra.run.dir={run}", timeout=900)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss/policy" in r]
    assert [r["step"] for r in rows] == [1] and rows[0]["plugin/counted_rollouts"] == 2.5
    trained = [i for r in read_jsonl(run / "data_order.jsonl") for i in r["examples"]]
    assert trained and all(i.startswith(("say-yes-", "say-no-")) for i in trained), trained  # env.words reached it
    assert "say_word.py" in (run / "config.yaml").read_text()  # a resume imports the same plugin
