"""frozenlake_text: gymnasium's FrozenLake (4x4 or 8x8, slippery or not) described in words.

Template (cells 1-based, surroundings in the order up, down, left, right):

    You are on a frozen lake of {n} by {n} tiles, at row {r}, column {c}{, on the start tile}.
    The goal is at row {n}, column {n}. Up: {tile}. Down: {tile}. Left: {tile}. Right: {tile}.
    {The ice is slippery: a move can slide sideways.|The ice is not slippery.}

where {tile} is "the start", "frozen ice", "a hole", "the goal" or "the edge of the lake".
Actions: move left, move down, move right, move up (gymnasium's order). Success: reaching the goal.
Time limit (env.max_episode_steps=0): gymnasium's, 100 steps on 4x4 (FrozenLake-v1), 200 on 8x8 (FrozenLake8x8-v1).
"""
from __future__ import annotations

from dataclasses import dataclass

from rltool.config import check_choice
from rltool.envs.text_gym import TextEnvConfig, register_text_env
from rltool.envs.text_gym.text_env import GymnasiumTextEnv, make_gym, ordinal_cell

TILES = {b"S": "the start", b"F": "frozen ice", b"H": "a hole", b"G": "the goal"}
MOVES = (("Up", -1, 0), ("Down", 1, 0), ("Left", 0, -1), ("Right", 0, 1))


@dataclass
class FrozenLakeConfig(TextEnvConfig):
    """frozenlake_text's own keys."""

    map_size: str = "4x4"
    """4x4 | 8x8."""
    slippery: bool = False
    """The ice is slippery (the intended move happens 1 time in 3, else a perpendicular one)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("env.map_size", self.map_size, ["4x4", "8x8"])


@register_text_env("frozenlake_text", config=FrozenLakeConfig)
class FrozenLakeText(GymnasiumTextEnv):
    ACTIONS = ["move left", "move down", "move right", "move up"]

    def __init__(self, cfg: FrozenLakeConfig):
        # gymnasium registers the 8x8 map under its own id, with its own time limit (200 steps, 4x4: 100)
        env_id = "FrozenLake8x8-v1" if cfg.map_size == "8x8" else "FrozenLake-v1"
        super().__init__(make_gym(env_id, cfg.max_episode_steps, map_name=cfg.map_size, is_slippery=cfg.slippery))
        self.desc = self.env.unwrapped.desc  # (n, n) bytes: S F H G
        self.n = self.desc.shape[0]
        self.slippery = cfg.slippery

    def describe(self, obs) -> str:
        n, (r, c) = self.n, divmod(int(obs), self.n)
        here = ", on the start tile" if self.desc[r, c] == b"S" else ""
        around = " ".join(f"{name}: {self.tile(r + dr, c + dc)}." for name, dr, dc in MOVES)
        ice = "The ice is slippery: a move can slide sideways." if self.slippery else "The ice is not slippery."
        return (f"You are on a frozen lake of {n} by {n} tiles, at {ordinal_cell(r, c)}{here}. "
                f"The goal is at {ordinal_cell(n - 1, n - 1)}. {around} {ice}")

    def tile(self, r: int, c: int) -> str:
        return TILES[bytes(self.desc[r, c])] if 0 <= r < self.n and 0 <= c < self.n else "the edge of the lake"
