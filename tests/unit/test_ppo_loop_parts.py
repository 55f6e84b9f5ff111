"""Parts of the encoder-agent PPO loop (rltool/ppo_train.py) on the real MiniLM: greedy evaluation (per-env
quotas, a step cap where an environment has no time limit) and updates that skip non-finite gradients."""
import threading

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rltool.actors.encoder_agent import EncoderAgent
from rltool.actors.token_encoder import TokenEncoder
from rltool.cli import conf_dir
from rltool.config import register_configs
from rltool.loops import PpoConfig
from rltool.envs.text_gym import register_text_env
from rltool.metrics import MetricsLog
from rltool.ppo_train import EVAL_SEED_OFFSET, Rollout, run_eval, update


def ppo_config(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["output_dir=x", "algo=encoder_ppo", "actors=minilm_agent", *overrides])
    return OmegaConf.to_object(cfg)


@pytest.fixture(scope="module")
def encoder():
    cfg = ppo_config("env=frozenlake_text")
    return TokenEncoder(cfg.lead_actor.path, cfg.lead_actor.encoder)


class ShortOrLong:
    """Copy i of the vector env is seeded eval_seed + i: even seeds play 1-step episodes worth 0, odd ones
    3-step episodes worth 1."""

    def __init__(self, cfg):
        self.long, self.t = False, 0

    def reset(self, seed=None):
        if seed is not None:
            self.long = seed % 2 == 1
        self.t = 0
        return "You wait in a long corridor." if self.long else "You wait in a short corridor."

    def available_actions(self):
        return ["wait"]

    def step(self, action):
        self.t += 1
        done = self.t == (3 if self.long else 1)
        return "You keep waiting.", float(self.long and done), done, False, {"success": self.long} if done else {}


@pytest.fixture(scope="module")
def short_or_long():
    register_text_env("short_or_long_text")(ShortOrLong)  # at run time: collection-time lists stay as shipped


def test_eval_takes_the_same_number_of_episodes_from_every_env(encoder, short_or_long, tmp_path):
    seed = 1  # eval seeds 1 + 1_000_003 + i: copy 0 even (short episodes), copy 1 odd (long ones)
    assert (seed + EVAL_SEED_OFFSET) % 2 == 0
    cfg = ppo_config("env=bandit_text", "env.name=short_or_long_text", "trainer.num_envs=2",
                     "algo.ppo.eval_episodes=4", f"seed={seed}")
    agent = EncoderAgent(encoder, cfg.lead_actor.heads, num_actions=1)
    metrics = run_eval(agent, cfg, 0, MetricsLog(tmp_path, enabled=False))
    # quotas 2 + 2 (stable-baselines3's evaluate_policy): returns [0, 0, 1, 1], lengths [1, 1, 3, 3]. The first
    # 4 episodes to end would be three short ones and one long: return 0.25, length 1.5
    assert metrics["eval/reward"] == 0.5 and metrics["eval/len"] == 2.0 and metrics["eval/success"] == 0.5


def test_eval_ends_where_the_environment_has_no_time_limit(encoder, tmp_path):
    # CliffWalking with env.max_episode_steps=0: gymnasium sets no limit, and an untrained greedy policy walks
    # into a wall or the same loop forever
    cfg = ppo_config("env=cliffwalking_text", "env.max_episode_steps=0", "trainer.num_envs=2", "algo.ppo.eval_episodes=2")
    torch.manual_seed(0)
    agent = EncoderAgent(encoder, cfg.lead_actor.heads, num_actions=4)
    result = {}
    worker = threading.Thread(target=lambda: result.update(run_eval(agent, cfg, 0, MetricsLog(tmp_path, enabled=False))),
                              daemon=True)  # a hang must fail the test, not stall the suite
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "greedy evaluation never ended"
    cap = cfg.algo.ppo.eval_max_steps
    assert result["eval/len"] == cap and result["eval/success"] == 0.0  # both episodes cut off at the cap


def test_an_update_with_nan_gradients_is_skipped_and_counted(encoder):
    torch.manual_seed(0)
    cfg = ppo_config("env=frozenlake_text")
    agent = EncoderAgent(encoder, cfg.lead_actor.heads, num_actions=4)
    state, acts = "You are on a frozen lake.", ("move left", "move down", "move right", "move up")
    T, N = 4, 2
    with torch.no_grad():
        _, logp, _, value = agent.get_action_and_value([state] * T * N, [acts] * T * N,
                                                       torch.ones(T * N, 4, dtype=torch.bool), action=torch.zeros(T * N, dtype=torch.long))
    roll = Rollout([[state] * N] * T, [[acts] * N] * T, [np.ones((N, 4), dtype=bool)] * T, torch.zeros(T, N, dtype=torch.long),
                   logp.view(T, N), value.view(T, N), torch.zeros(T, N), torch.zeros(T, N),
                   torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool))
    returns = torch.full((T, N), float("nan"))  # a nan reward upstream: nan value loss, nan gradients
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    p = PpoConfig(num_steps=T, num_minibatches=2, update_epochs=2)
    optimizer = torch.optim.Adam(agent.parameters(), lr=p.lr)
    from rltool.algos.losses import POLICY_LOSSES, LossParams
    from rltool.algos.value_losses import VALUE_LOSSES

    metrics = update(agent, optimizer, roll, torch.ones(T, N), returns, p, POLICY_LOSSES["clip"],
                     VALUE_LOSSES[p.value_loss], LossParams())
    assert all(torch.equal(before[k], v) for k, v in agent.state_dict().items())  # no nan written into any weight
    assert metrics["update/skipped_nonfinite"] == 4  # 2 epochs x 2 minibatches, each skipped
    assert not optimizer.state  # Adam's moments never saw a nan either
