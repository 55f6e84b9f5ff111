"""Text environments: exact descriptions (the documented templates), termination vs truncation, the
vector API, and saving / restoring an environment mid-episode."""
import numpy as np
import pytest

from rltool.envs.text_gym import TEXT_ENVS, make_vector_env
from rltool.envs.text_gym.text_env import GymTextEnv, TextEnv
from rltool.schemas import env_config


def make(name, **kw):
    return TEXT_ENVS[name](env_config(name=name, **kw))


def test_frozenlake_describes_position_surroundings_and_goal():
    env = make("frozenlake_text")
    assert env.reset(seed=0) == (
        "You are on a frozen lake of 4 by 4 tiles, at row 1, column 1, on the start tile. The goal is at row 4, "
        "column 4. Up: the edge of the lake. Down: frozen ice. Left: the edge of the lake. Right: frozen ice. "
        "The ice is not slippery.")
    text, reward, terminated, truncated, info = env.step(1)  # down: row 2, column 1; a hole to its right (4x4 map)
    assert text.startswith("You are on a frozen lake of 4 by 4 tiles, at row 2, column 1. ")
    assert "Right: a hole." in text and (reward, terminated, truncated) == (0.0, False, False)
    text, reward, terminated, truncated, info = env.step(2)  # right: into the hole
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, False)
    assert env.available_actions() == ["move left", "move down", "move right", "move up"]


def test_frozenlake_map_size_and_slippery():
    env = make("frozenlake_text", map_size="8x8", slippery=True)
    text = env.reset(seed=0)
    assert "of 8 by 8 tiles" in text and "row 8, column 8" in text and text.endswith("a move can slide sideways.")


@pytest.mark.parametrize("map_size, limit", [("4x4", 100), ("8x8", 200)])  # gymnasium's FrozenLake-v1, FrozenLake8x8-v1
def test_frozenlake_time_limit_is_gymnasiums_own_per_map(map_size, limit):
    env = make("frozenlake_text", map_size=map_size)  # env.max_episode_steps=0: gymnasium's own limit
    env.reset(seed=0)
    ends = [env.step(0)[3] for _ in range(limit)]  # move left from the start: into the edge, staying put
    assert ends.index(True) == limit - 1  # truncated at step `limit`, not before


def test_blackjack_describes_hand_ace_and_dealer():
    env = make("blackjack_text")
    assert env.describe((15, 1, 0)) == "Your cards total 15 with no usable ace. The dealer shows an ace."
    assert env.describe((17, 8, 1)) == "Your cards total 17, counting an ace as 11 (a usable ace). The dealer shows an 8."
    assert env.available_actions() == ["stick", "hit"]


def test_taxi_describes_taxi_passenger_destination_and_walls():
    env = make("taxi_text")
    state = env.env.unwrapped.encode(0, 0, 1, 3)  # taxi (0,0) on the red stand, passenger at green, to blue
    assert env.describe(state) == (
        "The taxi is at row 1, column 1 of a 5 by 5 grid, at the red stand. The passenger waits at the green stand "
        "(row 1, column 5). The passenger wants to go to the blue stand (row 5, column 4). Walls block the taxi to "
        "the west.")
    assert "The passenger is in the taxi." in env.describe(env.env.unwrapped.encode(2, 2, 4, 0))


def test_cliffwalking_truncates_at_the_time_limit_and_terminates_at_the_goal():
    env = make("cliffwalking_text", max_episode_steps=3)
    assert "at row 4, column 1, on the start tile" in env.reset(seed=0)
    results = [env.step(0)[1:4] for _ in range(3)]  # up, up, up: -1 each, cut off at the third
    assert results == [(-1.0, False, False), (-1.0, False, False), (-1.0, False, True)]
    env = make("cliffwalking_text", max_episode_steps=100)
    env.reset(seed=0)
    steps = [0] + [1] * 11 + [2]  # up, right x11, down onto the goal: the optimal 13-step path
    total = sum(env.step(a)[1] for a in steps)
    assert total == -13.0


def test_bandit_is_a_plain_text_env_with_shuffled_actions():
    env = make("bandit_text")
    assert isinstance(env, TextEnv)
    orders = set()
    for seed in range(6):
        env.reset(seed=seed)
        orders.add(tuple(env.available_actions()))
        green = env.available_actions().index("open the green door")
        assert env.step(green)[1:4] == (1.0, True, False)
    assert len(orders) > 1


def test_vector_env_gives_descriptions_actions_and_final_obs():
    envs = make_vector_env(env_config(name="blackjack_text"), 3)
    obs, info = envs.reset(seed=0)
    assert all(isinstance(o, str) and o.startswith("Your cards total") for o in obs)
    assert [tuple(a) for a in info["actions"]] == [("stick", "hit")] * 3
    obs, reward, terminated, truncated, info = envs.step(np.zeros(3, dtype=int))  # stick: every hand ends
    assert terminated.all() and "final_obs" in info and set(info["final_info"]["success"]) <= {True, False}
    envs.close()


def test_state_round_trip_resumes_an_episode_exactly():
    env = GymTextEnv(make("frozenlake_text", slippery=True))
    env.reset(seed=3)
    env.step(1)
    saved = env.get_state()
    ahead = [env.step(a)[:4] for a in (2, 2, 1, 1, 2)]
    env.set_state(saved)
    assert [env.step(a)[:4] for a in (2, 2, 1, 1, 2)] == ahead  # same slips: the RNG travelled with the state


@pytest.mark.parametrize("name", sorted(TEXT_ENVS.names()))
def test_every_env_speaks_only_text(name):
    env = make(name, max_episode_steps=50)
    text = env.reset(seed=0)
    assert isinstance(text, str) and len(text) > 20 and not text.isdigit()
    assert all(isinstance(a, str) for a in env.available_actions())


class SilentRoom:
    """A user environment whose descriptions or actions come out empty."""

    def __init__(self, empty: str):
        self.empty = empty

    def reset(self, seed=None):
        return "" if self.empty == "reset" else "A quiet room."

    def available_actions(self):
        return ["wait", " "] if self.empty == "action" else ["wait"]

    def step(self, action):
        return ("" if self.empty == "step" else "Still quiet."), 0.0, False, False, {}


@pytest.mark.parametrize("empty, message", [
    ("reset", "reset() returned an empty description ''"),
    ("step", "step() returned an empty description ''"),
    ("action", "available_actions() returned an empty action ' '")])
def test_an_empty_description_or_action_is_one_line_naming_the_env(empty, message):
    from rltool.config import ConfigError

    env = GymTextEnv(SilentRoom(empty), name="silent_room")
    with pytest.raises(ConfigError) as e:
        env.reset(seed=0)
        env.step(0)
    assert str(e.value) == f"env.name='silent_room': {message}; every description and action needs at least one word"
