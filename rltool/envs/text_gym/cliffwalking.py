"""cliffwalking_text: gymnasium's CliffWalking (4 x 12, start bottom left, goal bottom right) in words.

Template (cells 1-based, surroundings up, down, left, right):

    You are on a cliff edge of 4 by 12 tiles, at row {r}, column {c}{, on the start tile}. The goal is at
    row 4, column 12. The cliff runs along row 4 from column 2 to column 11. Up: {tile}. Down: {tile}.
    Left: {tile}. Right: {tile}.

where {tile} is "safe ground", "the cliff", "the start", "the goal" or "the edge of the world".
Actions: move up, move right, move down, move left (gymnasium's order). Success: reaching the goal. Stepping into the cliff costs
-100 and returns to the start; every step costs -1; the shortest safe path is 13 steps (return -13).
gymnasium sets no time limit here: env.max_episode_steps (100 in conf/env/cliffwalking_text.yaml) does.
"""
from __future__ import annotations

from rltool.envs.text_gym import TextEnvConfig, register_text_env
from rltool.envs.text_gym.text_env import GymnasiumTextEnv, make_gym, ordinal_cell

ROWS, COLS = 4, 12
MOVES = (("Up", -1, 0), ("Down", 1, 0), ("Left", 0, -1), ("Right", 0, 1))


def tile(r: int, c: int) -> str:
    if not (0 <= r < ROWS and 0 <= c < COLS):
        return "the edge of the world"
    if r == ROWS - 1:
        return "the start" if c == 0 else "the goal" if c == COLS - 1 else "the cliff"
    return "safe ground"


@register_text_env("cliffwalking_text")
class CliffWalkingText(GymnasiumTextEnv):
    ACTIONS = ["move up", "move right", "move down", "move left"]

    def __init__(self, cfg: TextEnvConfig):
        super().__init__(make_gym("CliffWalking-v1", cfg.max_episode_steps))

    def describe(self, obs) -> str:
        r, c = divmod(int(obs), COLS)
        here = ", on the start tile" if (r, c) == (ROWS - 1, 0) else ""
        around = " ".join(f"{name}: {tile(r + dr, c + dc)}." for name, dr, dc in MOVES)
        return (f"You are on a cliff edge of {ROWS} by {COLS} tiles, at {ordinal_cell(r, c)}{here}. "
                f"The goal is at {ordinal_cell(ROWS - 1, COLS - 1)}. The cliff runs along row {ROWS} from column 2 "
                f"to column {COLS - 1}. {around}")

    def success(self, reward: float, terminated: bool) -> bool:
        return terminated  # CliffWalking terminates only at the goal
