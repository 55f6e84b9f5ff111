"""A user's task as a plugin: one file outside the repository registers an environment, a reward and an
algorithm's rollout, and `rltool train plugins=[that file]` trains with all three (real vLLM, real model).
A plugin's own config keys wait for per-component config schemas; this plugin reads none."""
import pytest

from tests.integration.helpers import TINY, read_jsonl, rltool

PLUGIN = '''
from rltool.algos.rollouts import GroupRollout, register_rollout
from rltool.envs import register_env
from rltool.envs.base import Example
from rltool.envs.single_turn import SingleTurnEnv
from rltool.rewards import reward

WORDS = ["yes", "no", "blue", "seven"]


@register_env("say_word")
class SayWord(SingleTurnEnv):
    name = "say_word"

    def __init__(self, cfg):
        rows = [Example(f"say-{i}", f"Reply with the single word: {w}", w) for i, w in enumerate(WORDS * 4)]
        super().__init__(cfg, train=rows, eval=rows[:4])


@reward("said_word")
def said_word(completion, example):
    return float(example.answer in completion.lower())


@register_rollout("counted")
class CountedRollout(GroupRollout):
    """The GRPO rollout, plus a metric saying it ran."""

    def __call__(self, step):
        samples, metrics = super().__call__(step)
        metrics["plugin/counted_rollouts"] = 1.0
        return samples, metrics
'''


@pytest.mark.slow
def test_plugin_env_reward_and_rollout_train_one_step(tmp_path):
    plugin = tmp_path / "elsewhere" / "say_word.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    run = tmp_path / "run"
    rltool("train", *TINY, f"plugins=[{plugin}]", "env.name=say_word", "reward.terms=[{name: said_word, weight: 1.0}]",
           "reward.success=said_word", "algo.rollout=counted", "trainer.max_steps=1", "eval.enabled=false",
           f"hydra.run.dir={run}", timeout=900)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss/policy" in r]
    assert [r["step"] for r in rows] == [1] and rows[0]["plugin/counted_rollouts"] == 1.0
    assert "say_word.py" in (run / "config.yaml").read_text()  # a resume imports the same plugin
