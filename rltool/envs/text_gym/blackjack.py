"""blackjack_text: gymnasium's Blackjack (Sutton & Barto rules: sab=True) in words.

Template:

    Your cards total {sum}{, counting an ace as 11 (a usable ace)| with no usable ace}. The dealer shows {card}.

where {card} is "an ace", "a 2" ... "a 10" (10 stands for 10, J, Q, K). Actions: stick, hit
(gymnasium's order). Rewards: +1 win, -1 loss, 0 draw; success: a win. One episode is one hand.
"""
from __future__ import annotations

from rltool.envs.text_gym import TextEnvConfig, register_text_env
from rltool.envs.text_gym.text_env import GymnasiumTextEnv, make_gym


@register_text_env("blackjack_text")
class BlackjackText(GymnasiumTextEnv):
    ACTIONS = ["stick", "hit"]

    def __init__(self, cfg: TextEnvConfig):
        super().__init__(make_gym("Blackjack-v1", cfg.max_episode_steps, sab=True))

    def describe(self, obs) -> str:
        total, dealer, usable_ace = (int(x) for x in obs)
        ace = ", counting an ace as 11 (a usable ace)" if usable_ace else " with no usable ace"
        card = "an ace" if dealer == 1 else ("an 8" if dealer == 8 else f"a {dealer}")
        return f"Your cards total {total}{ace}. The dealer shows {card}."
