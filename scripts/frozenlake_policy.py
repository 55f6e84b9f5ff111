"""A trained FrozenLake encoder agent's greedy policy, tile by tile, against the optimal one, and its exact success.

    .venv/bin/python scripts/frozenlake_policy.py outputs/<run>/checkpoints/step_000292 [--map 4x4] [--slippery]

The greedy evaluation in a run samples episodes; this evaluates the greedy policy exactly on gymnasium's
transition table (the probability of reaching the goal within the time limit, by dynamic programming) and
prints, per tile, the agent's action probabilities and the optimal action (finite-horizon value iteration).
The finite-horizon optimum (4x4 slippery: 0.744) needs a policy that changes with the steps left; a fixed
policy, such as value iteration's first-step actions, gets 0.740.
It shows whether a shortfall comes from one tile or from many.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rltool.actors.encoder_agent import EncoderAgent
from rltool.actors.token_encoder import TokenEncoder
from rltool.config import EncoderConfig, HeadsConfig
from rltool.envs.text_gym.frozenlake import FrozenLakeText
from rltool.schemas import env_config


def success_probability(P, n_states: int, policy, horizon: int) -> np.ndarray:
    """policy(s) -> action distribution (n_actions,); P is gymnasium's table. -> P(goal within horizon) per state."""
    v = np.zeros(n_states)
    for _ in range(horizon):
        v = np.array([sum(pa * sum(p * (r + (0.0 if done else v[s2])) for p, s2, r, done in P[s][a])
                          for a, pa in enumerate(policy(s))) for s in range(n_states)])
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="a run's checkpoints/step_N directory")
    args = ap.parse_args()
    cfg = OmegaConf.load(args.checkpoint / "config.yaml")
    env = FrozenLakeText(env_config(name="frozenlake_text", map_size=cfg.env.map_size, slippery=cfg.env.slippery))
    P, n = env.env.unwrapped.P, env.n * env.n
    horizon = env.env.spec.max_episode_steps or 100
    heads = HeadsConfig(**OmegaConf.to_container(cfg.actors.policy.heads))
    agent = EncoderAgent(TokenEncoder(cfg.actors.policy.path, EncoderConfig()), heads, num_actions=4)
    agent.load_state_dict(torch.load(args.checkpoint / "agent.pt", weights_only=True))
    texts = [env.describe(s) for s in range(n)]
    with torch.no_grad():
        probs = torch.softmax(agent.logits(agent.features(texts), [env.ACTIONS] * n, torch.ones(n, 4, dtype=torch.bool)), -1)
    greedy = probs.argmax(-1).numpy()
    v_opt = np.zeros(n)  # finite-horizon optimal values and actions
    for _ in range(horizon):
        q = np.array([[sum(p * (r + (0.0 if d else v_opt[s2])) for p, s2, r, d in P[s][a]) for a in range(4)] for s in range(n)])
        v_opt = q.max(1)
    v_greedy = success_probability(P, n, lambda s: np.eye(4)[greedy[s]], horizon)
    v_sampled = success_probability(P, n, lambda s: probs[s].numpy(), horizon)
    v_vi = success_probability(P, n, lambda s: np.eye(4)[q[s].argmax()], horizon)
    print(f"success from the start within {horizon} steps: greedy {v_greedy[0]:.3f}, sampled {v_sampled[0]:.3f}; "
          f"value iteration's policy {v_vi[0]:.3f} (the time-dependent optimum: {v_opt[0]:.3f})")
    for s in range(n):
        if env.desc.flat[s] in (b"H", b"G"):
            continue
        loss = q[s].max() - q[s][greedy[s]]
        print(f"tile {s:2d} row {s // env.n + 1} col {s % env.n + 1}: greedy {env.ACTIONS[greedy[s]]:10s} "
              f"optimal {env.ACTIONS[q[s].argmax()]:10s} value lost {loss:.3f}  probs {np.round(probs[s].numpy(), 2)}")


if __name__ == "__main__":
    main()
