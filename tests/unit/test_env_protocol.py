"""The Env base class (rltool/envs/base.py) and the Rollout base class (rltool/algos/rollouts.py): every
registered component subclasses its base, and a user env that defines only its problems and its prompt
gets the single-turn default of every other hook the loops call."""
from types import SimpleNamespace

import pytest

from rltool.algos.rollouts import ROLLOUTS, GroupIds, GroupRollout, Rollout, RolloutContext
from rltool.config import EnvConfig, RewardConfig, RewardTerm
from rltool.envs import ENVS
from rltool.envs.base import Env, Example
from rltool.envs.compose import ComposedEnv
from rltool.evaluate import evaluate
from rltool.rewards.registry import reward
from rltool.rewards.score import Scorer
from tests.unit.scripted_engine import Scripted


class Echo(Env):
    """A user's env with only the three required methods: say the word back."""

    name = "test_echo"

    def __init__(self, words=("red", "blue")):
        self.examples = [Example(f"{self.name}-{i}", f"Say {w}.", w) for i, w in enumerate(words)]

    def train_examples(self):
        return self.examples

    def eval_examples(self):
        return self.examples[:1]

    def messages(self, example):
        return [{"role": "user", "content": example.question}]


class Measured(Echo):
    name = "test_measured"

    def eval_metrics(self):
        return {"said": "test_echo_said", "formatted": "format"}


class Canned(Echo):
    """A part with its own rollout: one marker per example instead of sampling."""

    name = "test_canned"

    def play(self, ctx, examples, ids):
        return [("canned", e.id, ids.take()) for e in examples]

    def eval_metrics(self):
        return {"said": "test_echo_said"}


@reward("test_echo_said")
def said(completion, answer):
    return float(completion.strip() == answer)


def context(tok, env, replies, group_size=3):
    cfg = SimpleNamespace(seed=0, trainer=SimpleNamespace(group_size=group_size, prompts_per_step=2),
                          hardware=SimpleNamespace(num_processes=1),
                          algo=SimpleNamespace(dynamic_sampling=False, overlong_mask=False, overlong_buffer=0,
                                               overlong_penalty=1.0),
                          rollout=SimpleNamespace(max_prompt_len=512, max_new_tokens=16, temperature=1.0, top_p=1.0))
    scorer = Scorer(RewardConfig(name="t", terms=[RewardTerm("test_echo_said")], success="test_echo_said"), 16)
    return RolloutContext(cfg, Scripted(tok, replies), tok, env, scorer, draw=lambda k: env.train_examples()[:k])


def test_every_registered_env_subclasses_env_and_declares_its_episodes():
    names = ENVS.names()
    assert {"arithmetic", "article_curriculum", "collab", "dataset", "gsm8k", "parallel"} <= set(names)
    assert [n for n in names if not (isinstance(ENVS[n], type) and issubclass(ENVS[n], Env))] == []
    own = [n for n in names if ENVS[n].__module__.startswith("rltool.")]
    assert sorted(n for n in own if ENVS[n].episodes == "multi_actor") == [
        "collab", "collab_arithmetic", "collab_gsm8k", "parallel", "parallel_gsm8k"]
    assert {ENVS[n].episodes for n in own} == {"single_turn", "multi_actor", "article"}


def test_a_user_env_with_only_its_problems_and_prompt_gets_the_single_turn_defaults():
    env, cfg = Echo(), EnvConfig(name="test_echo")
    assert Echo.episodes == "single_turn" and Echo.columns(cfg) == ()
    assert Echo.check(cfg) is None and Echo.check_actors(cfg, ["solver", "checker"]) is None  # accepts anything
    assert env.eval_metrics() == {} and env.evaluate({}, cfg) is None  # None: the standard held-out eval
    assert env.parts == [env] and env.owner(env.examples[1]) is env


def test_an_env_missing_a_required_method_says_so():
    class NoPrompt(Env):
        name = "test_no_prompt"

    with pytest.raises(NotImplementedError):
        NoPrompt().messages(Example("x", "q", "a"))
    with pytest.raises(NotImplementedError):
        NoPrompt().train_examples()


def test_the_default_play_is_group_size_completions_of_the_env_prompt_scored_by_the_run_reward(tok):
    env = Echo()
    ctx = context(tok, env, ["red", "blue", "green"], group_size=3)
    samples, metrics = GroupRollout(ctx)(step=0)
    (prompts, sampling), = ctx.engine.calls  # one engine call: both problems, n=3 each
    assert sampling.n == 3 and ["Say red." in p for p in prompts] == [True, False] and "Say blue." in prompts[1]
    # replies cycle red, blue, green, red, blue, green: 'red' is right once for problem 0, 'blue' once for problem 1
    assert [(s.example_id, s.text, s.reward, s.success) for s in samples] == [
        ("test_echo-0", "red", 1.0, 1.0), ("test_echo-0", "blue", 0.0, 0.0), ("test_echo-0", "green", 0.0, 0.0),
        ("test_echo-1", "red", 0.0, 0.0), ("test_echo-1", "blue", 1.0, 1.0), ("test_echo-1", "green", 0.0, 0.0)]
    assert [s.group for s in samples] == [0, 0, 0, 1, 1, 1] and {s.actor for s in samples} == {"policy"}
    assert metrics == {"rollout/reward_all": 2 / 6, "rollout/groups": 2.0}


def test_the_default_eval_answer_is_the_policy_greedy_completion(tok):
    env = Echo()
    policy = SimpleNamespace(tokenizer=tok, engine=Scripted(tok, ["red", "blue"]))
    cfg = SimpleNamespace(lead_actor=SimpleNamespace(name="policy"), rollout=SimpleNamespace(max_prompt_len=512),
                          eval=SimpleNamespace(max_new_tokens=7))
    answers = env.answers({"policy": policy, "judge": None}, env.examples, cfg)
    assert [a.text for a in answers] == ["red", "blue"]
    (prompts, sampling), = policy.engine.calls
    assert "Say red." in prompts[0] and "Say blue." in prompts[1]
    assert (sampling.greedy, sampling.n, sampling.max_new_tokens) == (True, 1, 7)


def test_a_composed_env_routes_each_hook_to_the_part_that_made_the_example(tok):
    echo, canned, measured = Echo(), Canned(("green",)), Measured(("pink",))
    env = ComposedEnv([echo, canned])
    assert env.parts == [echo, canned] and [env.owner(e) for e in env.train_examples()] == [echo, canned, echo]
    # eval_metrics over all problems: what every part declares alike (echo none; canned and measured 'said')
    assert env.eval_metrics() == {} and ComposedEnv([canned, measured]).eval_metrics() == {"said": "test_echo_said"}
    ctx = context(tok, env, ["red"], group_size=2)
    samples = env.play(ctx, env.train_examples(), GroupIds(0))
    # echo's two problems through the default play (groups 0, 1; 2 completions each), then canned's own (group 2)
    assert [(s.example_id, s.group) for s in samples[:4]] == [("test_echo-0", 0), ("test_echo-0", 0),
                                                               ("test_echo-1", 1), ("test_echo-1", 1)]
    assert samples[4:] == [("canned", "test_canned-0", 2)]


def test_every_registered_rollout_subclasses_rollout_and_declares_what_it_plays():
    assert [n for n in ROLLOUTS.names() if not issubclass(ROLLOUTS[n], Rollout)] == []
    assert (Rollout.plays, Rollout.REWARD) == (("single_turn",), None)
    assert {n: ROLLOUTS[n].plays for n in ("grpo", "erl", "agrl")} == {
        "grpo": ("single_turn", "multi_actor"), "erl": ("single_turn",), "agrl": ("article",)}
    assert ROLLOUTS["grpo"].REWARD is None and ROLLOUTS["agrl"].REWARD.startswith("mean log-prob of the values read")
    stateless = GroupRollout(ctx=None)
    assert stateless.state_dict() == {} and stateless.load_state_dict({}) is None


def test_pass_at_n_samples_the_policy_prompt_so_it_is_reported_for_single_turn_episodes_only(tok):
    class Team(Echo):
        name, episodes = "test_team", "multi_actor"

    def run(env):
        policy = SimpleNamespace(name="policy", tokenizer=tok, engine=Scripted(tok, ["red", "blue"]))
        cfg = SimpleNamespace(lead_actor=policy, seed=0, rollout=SimpleNamespace(max_prompt_len=512),
                              reward=RewardConfig(name="t", terms=[RewardTerm("test_echo_said")], success="test_echo_said"),
                              eval=SimpleNamespace(size=0, n=2, max_new_tokens=16, temperature=1.0))
        return evaluate({"policy": policy}, env, cfg)[0]

    # one held-out problem ('red'): the greedy answer is 'red', the 2 samples 'blue', 'red'
    assert (run(Echo())["eval/success"], run(Echo())["eval/pass@2"]) == (1.0, 1.0)
    mixed = run(ComposedEnv([Echo(), Team(("pink",))]))  # greedy 'red' for red, 'blue' for pink
    assert "eval/pass@2" not in mixed
    assert (mixed["eval/success"], mixed["eval/test_echo/success"], mixed["eval/test_team/success"]) == (0.5, 1.0, 0.0)
