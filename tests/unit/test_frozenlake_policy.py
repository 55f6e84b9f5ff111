"""scripts/frozenlake_policy.py's exact success probability, on hand-made transition tables."""
import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "frozenlake_policy.py"
spec = importlib.util.spec_from_file_location("frozenlake_policy", SCRIPT)
fp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fp)

# state 0: action 0 reaches the goal (reward 1, done); action 1 stays put (reward 0)
P = {0: {0: [(1.0, 1, 1.0, True)], 1: [(1.0, 0, 0.0, False)]}, 1: {0: [(1.0, 1, 0.0, True)], 1: [(1.0, 1, 0.0, True)]}}


def test_success_probability_by_hand():
    assert fp.success_probability(P, 2, lambda s: np.array([1.0, 0.0]), horizon=5)[0] == 1.0
    assert fp.success_probability(P, 2, lambda s: np.array([0.0, 1.0]), horizon=5)[0] == 0.0
    # 50/50 with two steps: 0.5 now, or stay (0.5) then 0.5 -> 0.75
    assert fp.success_probability(P, 2, lambda s: np.array([0.5, 0.5]), horizon=2)[0] == 0.75


def test_success_probability_of_the_optimal_slippery_policy_matches_sampling():
    # value iteration's 4x4 slippery policy (0 left, 1 down, 2 right, 3 up), evaluated exactly and by 4,000 episodes
    policy = [0, 3, 3, 3, 0, 0, 0, 0, 3, 1, 0, 0, 0, 2, 1, 0]
    env = gym.make("FrozenLake-v1", is_slippery=True)
    exact = fp.success_probability(env.unwrapped.P, 16, lambda s: np.eye(4)[policy[s]], horizon=100)[0]
    wins = 0
    for i in range(4000):
        s, _ = env.reset(seed=i)
        done = False
        while not done:
            s, r, term, trunc, _ = env.step(policy[s])
            done = term or trunc
        wins += r > 0
    assert 0.73 < exact < 0.75 and abs(wins / 4000 - exact) < 3 * np.sqrt(exact * (1 - exact) / 4000)
