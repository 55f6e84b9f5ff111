"""bandit_text: three doors, one pays. Written against the plain TextEnv interface (no gymnasium),
as the template for a user environment; tests train on it.

State: "Three doors stand before you: a red door, a green door and a blue door. Behind one of them is
a reward." Actions: "open the red door", "open the green door", "open the blue door", listed in a new
random order every episode (so a policy must read them: use actors.heads.actions=text). The green door
pays 1, the others 0; one step per episode. Success: the green door.
"""
from __future__ import annotations

import random

from rltool.envs.text_gym import TextEnvConfig, register_text_env

DOORS = ["red", "green", "blue"]
PAYING = "green"
STATE = ("Three doors stand before you: a red door, a green door and a blue door. "
         "Behind one of them is a reward.")


@register_text_env("bandit_text")
class BanditText:
    def __init__(self, cfg: TextEnvConfig):
        self.rng = random.Random()
        self.order = list(DOORS)

    def reset(self, seed: int | None = None) -> str:
        if seed is not None:
            self.rng.seed(seed)
        self.order = self.rng.sample(DOORS, len(DOORS))
        return STATE

    def available_actions(self) -> list[str]:
        return [f"open the {door} door" for door in self.order]

    def step(self, action: int) -> tuple[str, float, bool, bool, dict]:
        won = self.order[action] == PAYING
        return STATE, float(won), True, False, {"success": won}
