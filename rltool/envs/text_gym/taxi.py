"""taxi_text: gymnasium's Taxi (5 x 5 grid, four stands, walls) in words.

Template (cells 1-based; stands: red (1, 1), green (1, 5), yellow (5, 1), blue (5, 4)):

    The taxi is at row {r}, column {c} of a 5 by 5 grid{, at the {colour} stand}.
    {The passenger waits at the {colour} stand (row {r}, column {c}).|The passenger is in the taxi.}
    The passenger wants to go to the {colour} stand (row {r}, column {c}).
    {Walls block the taxi to the {east|west|east and west}.|No wall next to the taxi.}

Actions: move south, move north, move east, move west, pick up the passenger, drop off the passenger
(gymnasium's order). Rewards: -1 a step, +20 for a delivery, -10 for an illegal pick-up or drop-off;
success: a delivery. gymnasium's action_mask is not passed on: every action stays available, as for
the stable-baselines3 peer in scripts/bench_ppo.py.
"""
from __future__ import annotations

from rltool.envs.text_gym import TextEnvConfig, register_text_env
from rltool.envs.text_gym.text_env import GymnasiumTextEnv, make_gym, ordinal_cell

STANDS = ["red", "green", "yellow", "blue"]  # gymnasium's locs: (0,0), (0,4), (4,0), (4,3)


@register_text_env("taxi_text")
class TaxiText(GymnasiumTextEnv):
    ACTIONS = ["move south", "move north", "move east", "move west", "pick up the passenger",
               "drop off the passenger"]

    def __init__(self, cfg: TextEnvConfig):
        super().__init__(make_gym("Taxi-v4", cfg.max_episode_steps))
        self.locs = [tuple(int(v) for v in loc) for loc in self.env.unwrapped.locs]
        self.map = self.env.unwrapped.desc  # (7, 11) bytes: '|' marks a wall between two cells

    def describe(self, obs) -> str:
        r, c, passenger, dest = self.env.unwrapped.decode(int(obs))
        at = f", at the {STANDS[self.locs.index((r, c))]} stand" if (r, c) in self.locs else ""
        if passenger == 4:
            who = "The passenger is in the taxi."
        else:
            who = f"The passenger waits at the {self.stand(passenger)}."
        walls = [side for side, col in (("east", 2 * c + 2), ("west", 2 * c)) if self.map[r + 1, col] == b"|"]
        wall = f"Walls block the taxi to the {' and '.join(walls)}." if walls else "No wall next to the taxi."
        return (f"The taxi is at {ordinal_cell(r, c)} of a 5 by 5 grid{at}. {who} "
                f"The passenger wants to go to the {self.stand(dest)}. {wall}")

    def stand(self, i: int) -> str:
        return f"{STANDS[i]} stand ({ordinal_cell(*self.locs[i])})"

    def success(self, reward: float, terminated: bool) -> bool:
        return terminated  # Taxi terminates only on a delivery
