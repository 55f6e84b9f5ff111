"""Held-out eval on the run's own reward: eval/success and eval/reward for every env, and each env's own
extra metrics (gsm8k/arithmetic: the accuracies), with a scripted engine and the real tokenizer."""
from types import SimpleNamespace


from rltool.config import RewardConfig, RewardTerm
from rltool.envs import make_env
from rltool.envs.base import Example
from rltool.envs.single_turn import SingleTurnEnv
from rltool.evaluate import evaluate
from rltool.rewards.registry import reward
from rltool.records import Completion
from rltool.schemas import env_config

class ByProblem:
    """Greedy engine: `reply(i, gold)` for the i-th problem it is shown (by the gold answer in the prompt)."""

    def __init__(self, tok, examples, reply):
        self.tok, self.reply = tok, reply
        self.gold = [(e.question, e.answer) for e in examples]

    def generate(self, prompts, sampling):
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            i, gold = next((i, a) for i, (q, a) in enumerate(self.gold) if q in text)
            reply = self.reply(i, gold)
            ids = self.tok.encode(reply, add_special_tokens=False) + [self.tok.eos_token_id]
            out.append([Completion(ids, [-0.5] * len(ids), reply, False)] * sampling.n)
        return out


def run_eval(tok, env, reward_cfg, reply):
    policy = SimpleNamespace(name="policy", tokenizer=tok, engine=ByProblem(tok, env.eval_examples(), reply))
    cfg = SimpleNamespace(lead_actor=policy, seed=0, reward=reward_cfg, rollout=SimpleNamespace(max_prompt_len=512),
                          eval=SimpleNamespace(size=0, n=1, max_new_tokens=16, temperature=1.0))
    return evaluate({"policy": policy}, env, cfg)


def test_arithmetic_eval_logs_success_weighted_reward_and_its_accuracies(tok):
    env = make_env(env_config(name="arithmetic", eval_size=4, train_size=4))
    # even problems: '#### <gold>' (strict and flexible right); odd ones: 'it is <gold>' (flexible only)
    reply = lambda i, gold: f"#### {gold}" if i % 2 == 0 else f"it is {gold}"  # noqa: E731
    cfg = RewardConfig(name="t", terms=[RewardTerm("gsm8k_flexible", 2.0), RewardTerm("gsm8k_strict", 1.0)],
                       success="gsm8k_strict")
    metrics, rows = run_eval(tok, env, cfg, reply)
    assert metrics["eval/success"] == 0.5  # 2 of 4 pass gsm8k_strict
    assert metrics["eval/reward"] == 2.5  # (2*1 + 1*1) twice, (2*1 + 1*0) twice: (3 + 3 + 2 + 2) / 4
    assert metrics["eval/accuracy_strict"] == 0.5 and metrics["eval/accuracy_flexible"] == 1.0
    assert {"eval/accuracy_math_verify", "eval/format_rate", "eval/len"} <= set(metrics)
    assert sorted((r["success"], r["reward"]) for r in rows) == [(0.0, 2.0), (0.0, 2.0), (1.0, 3.0), (1.0, 3.0)]


class Words(SingleTurnEnv):
    """A user's own non-numeric task: say the word back."""
    name = "test_words"

    def __init__(self, cfg):
        words = ["apple", "pear", "plum", "fig"]
        super().__init__(cfg, [], [Example(f"w-{i}", f"Say {w}.", w) for i, w in enumerate(words)])


@reward("test_said_the_word")
def said_the_word(completion, answer):
    return float(completion.strip() == answer)


@reward("test_short")
def short(completion):
    return 1.0 if len(completion) <= 4 else 0.0


def test_a_user_env_is_scored_on_its_own_reward_not_as_gsm8k(tok):
    env = Words(env_config(name="arithmetic"))
    reply = lambda i, gold: gold if i < 3 else "no idea"  # noqa: E731 (3 of 4 right; 'pear', 'plum', 'fig' short)
    cfg = RewardConfig(name="t", terms=[RewardTerm("test_said_the_word", 1.0), RewardTerm("test_short", 0.5)],
                       success="test_said_the_word")
    metrics, _ = run_eval(tok, env, cfg, reply)
    assert metrics["eval/success"] == 0.75
    assert metrics["eval/reward"] == (1.0 + 1.5 + 1.5 + 0.0) / 4  # apple (5 letters), pear, plum, 'no idea'
    assert not [k for k in metrics if "accuracy" in k or "format_rate" in k]  # no GSM8K measures on a word task


@reward("test_agreed")
def agreed(completion, conversation):
    """Reads the team's conversation, which a greedy eval answer does not carry."""
    return float(len({t["content"] for t in conversation}) == 1)


def test_a_conversation_reward_in_a_team_env_leaves_success_out_with_one_warning(tok, capsys):
    env = make_env(env_config(name="collab_arithmetic", eval_size=2, train_size=2))
    engine = ByProblem(tok, env.eval_examples(), lambda i, gold: f"#### {gold}")
    actors = {n: SimpleNamespace(name=n, tokenizer=tok, engine=engine) for n in ("solver", "checker")}
    cfg = SimpleNamespace(lead_actor=actors["solver"], seed=0, rollout=SimpleNamespace(max_prompt_len=512),
                          eval=SimpleNamespace(size=0, n=1, max_new_tokens=16, temperature=1.0),
                          reward=RewardConfig(name="t", terms=[RewardTerm("test_agreed")], success="test_agreed"))
    metrics, _ = evaluate(actors, env, cfg)
    assert metrics["eval/accuracy_flexible"] == 1.0  # the task's own measures still come
    assert "eval/success" not in metrics and "eval/reward" not in metrics
    assert ("warning: eval: reward 'test_agreed' reads the conversation, which eval's greedy answers do not carry: "
            "eval/success and eval/reward are not logged") in capsys.readouterr().out
