"""`rltool train` with a broken user environment registered first, as a user's own env file would be.
Run by test_ppo_loop.py:

    python tests/integration/ppo_fault_driver.py nan_reward|stuck  <rltool train overrides...>

nan_reward: every step pays nan (the loss and gradients follow); stuck: the first step never returns.
"""
from __future__ import annotations

import sys
import time

from rltool.envs.text_gym import register_text_env


class BrokenRoom:
    def __init__(self, cfg, fault: str):
        self.fault = fault

    def reset(self, seed=None):
        return "You stand in a room with one door."

    def available_actions(self):
        return ["open the door", "wait"]

    def step(self, action):
        if self.fault == "stuck":
            time.sleep(3600)
        return "You stand in a room with one door.", float("nan"), action == 0, False, {}


if __name__ == "__main__":
    fault = sys.argv[1]
    register_text_env(f"{fault}_text")(lambda cfg: BrokenRoom(cfg, fault))
    from rltool import cli

    sys.argv = ["rltool", "train", "env=bandit_text", f"env.name={fault}_text", *sys.argv[2:]]
    cli.main()
