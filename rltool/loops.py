"""Training loops by name: `algo.loop` picks one, the CLI checks the config with it and runs it.

    lm   rltool/train.py       language models: vLLM rollouts, the GRPO family, ERL
    ppo  rltool/ppo_train.py   encoder agents: PPO over a pretrained text encoder on text environments

Each entry is a `Loop(check, train)`; the ppo loop registers its keys, `algo.ppo.*` (PpoConfig, below). `check(config)` runs after the schema checks and before anything
heavy loads, raising ConfigError; `train(config)` returns the final eval metrics (a multirun tables them).
Both import their modules when called, so importing this file stays cheap (no torch): `rltool validate`
and config errors remain instant. A new loop is one module plus one entry here, not a branch in cli.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

from rltool.config import ConfigError, check
from rltool.registry import Registry

if TYPE_CHECKING:
    from rltool.config import Config


class Loop(NamedTuple):
    check: Callable[["Config"], None]
    train: Callable[["Config"], dict]


LOOPS: Registry[Loop] = Registry("training loop")


def check_lm(config: "Config") -> None:
    from rltool.cli import check_lm_config  # the LM checks live with the CLI that always ran them

    check_lm_config(config)


def train_lm(config: "Config") -> dict:
    from rltool.train import train

    return train(config)


def check_ppo(config: "Config") -> None:
    """Text environment, encoder path, registered pieces and batch shape of an encoder-agent run."""
    from rltool.envs.text_gym import validate_text_env_config

    validate_text_env_config(config.env)
    check_encoder_path(config.lead_actor.path, config.lead_actor.encoder.trainable_layers)
    from rltool.algos.gae import STEP_ADVANTAGES
    from rltool.algos.losses import POLICY_LOSSES
    from rltool.algos.value_losses import VALUE_LOSSES

    a = config.algo
    for key, value, registry in (("algo.advantage", a.advantage, STEP_ADVANTAGES), ("algo.loss", a.loss, POLICY_LOSSES),
                                 ("algo.ppo.value_loss", a.ppo.value_loss, VALUE_LOSSES)):
        if value not in registry:
            raise ConfigError(f"{key}={value!r}: unknown for algo.loop=ppo; valid: {', '.join(registry.names())}")
    batch = a.ppo.num_steps * config.trainer.num_envs
    if batch % a.ppo.num_minibatches:
        raise ConfigError(f"algo.ppo.num_minibatches={a.ppo.num_minibatches}: must divide algo.ppo.num_steps x "
                          f"trainer.num_envs = {batch}")
    if config.hardware.num_processes != 1:
        raise ConfigError(f"hardware.num_processes={config.hardware.num_processes}: algo.loop=ppo runs in one process; "
                          "use hardware=cpu or hardware=gpu1")


def check_encoder_path(path: str, trainable_layers: int) -> None:
    """embedded:all-minilm-l6-v2, a local encoder directory, or a hub id; trainable_layers <= its layers."""
    import re

    from rltool.actors.token_encoder import EMBEDDED_MINILM

    if path.startswith("embedded:"):
        if path != EMBEDDED_MINILM:
            raise ConfigError(f"actors.path={path!r}: not an embedded encoder; algo=encoder_ppo reads states with one: "
                              f"actors=minilm_agent ({EMBEDDED_MINILM}) or a local encoder directory")
        from rltool.actors.text_encoder import minilm_dir

        try:
            path = str(minilm_dir())
        except RuntimeError as e:
            raise ConfigError(f"actors.path={EMBEDDED_MINILM!r}: {e}") from None
    elif not os.path.isdir(path):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
            raise ConfigError(f"actors.path={path!r}: no such directory; expected a local encoder directory, a hub id "
                              f"(org/name) or {EMBEDDED_MINILM}")
        return  # a hub id: its layer count is known once it loads
    config_json = os.path.join(path, "config.json")
    if not os.path.isfile(config_json):
        raise ConfigError(f"actors.path={path!r}: directory has no config.json (expected a HF encoder directory)")
    layers = json.load(open(config_json)).get("num_hidden_layers", 0)
    if trainable_layers > layers:
        raise ConfigError(f"actors.encoder.trainable_layers={trainable_layers}: must be <= the encoder's {layers} layers")


@dataclass
class PpoConfig:
    """PPO for encoder agents (algo=encoder_ppo, cleanrl's ppo.py settings); read only when algo.loop=ppo.
    The policy clip is algo.clip_eps_low/high, the estimator algo.advantage (gae), the loss algo.loss (clip)."""

    lr: float = 2.5e-4
    """Adam learning rate of the pooling and heads (fine-tuned encoder layers: actors.encoder.lr)."""
    anneal_lr: bool = True
    """Decay every learning rate linearly to 0 over trainer.total_env_steps."""
    num_steps: int = 128
    """Steps per environment in one rollout; a rollout holds num_steps x trainer.num_envs transitions."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE's lambda (1: Monte Carlo returns bootstrapped at the rollout end, 0: one-step TD)."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per pass; must divide num_steps x trainer.num_envs."""
    norm_adv: bool = True
    """Normalise advantages within each minibatch."""
    norm_reward: bool = False
    """Divide rewards by the running std of the discounted return (rltool/algos/reward_scale.py): values and
    advantages near 1 whatever the reward's units (CliffWalking's -100s). Logged returns stay unscaled."""
    value_loss: str = "mse"
    """Registered value loss (rltool/algos/value_losses.py): mse (as stable-baselines3) | clipped (against the old
    values; value_clip is in return units, so it suits norm_reward=true, where returns are near 1)."""
    value_clip: float = 0.2
    """clipped: V may move at most this far from the rollout's old value before the loss stops pulling."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip over every trained parameter."""
    target_kl: Optional[float] = None
    """Stop a rollout's epochs once the approximate KL to the rollout policy exceeds this (null: never)."""
    eval_episodes: int = 100
    """Greedy evaluation episodes at every eval (trainer.eval_every rollouts, and at the end), shared evenly
    between the trainer.num_envs environments."""
    eval_max_steps: int = 1000
    """Greedy evaluation cuts an episode off after this many steps (counted as ended, without success): a
    deterministic policy can loop forever where the environment has no time limit (env.max_episode_steps=0)."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "algo.ppo.lr", self.lr, "must be > 0")
        check(0 < self.gamma <= 1, "algo.ppo.gamma", self.gamma, "must be in (0, 1]")
        check(0 <= self.gae_lambda <= 1, "algo.ppo.gae_lambda", self.gae_lambda, "must be in [0, 1]")
        for key in ("num_steps", "update_epochs", "num_minibatches", "eval_episodes", "eval_max_steps"):
            check(getattr(self, key) >= 1, f"algo.ppo.{key}", getattr(self, key), "must be >= 1")
        check(self.value_clip > 0, "algo.ppo.value_clip", self.value_clip, "must be > 0")
        for key in ("vf_coef", "ent_coef", "max_grad_norm"):
            check(getattr(self, key) >= 0, f"algo.ppo.{key}", getattr(self, key), "must be >= 0")
        check(self.target_kl is None or self.target_kl > 0, "algo.ppo.target_kl", self.target_kl, "must be > 0 or null")


def train_ppo(config: "Config") -> dict:
    from rltool.ppo_train import train

    return train(config)


LOOPS.register("lm")(Loop(check_lm, train_lm))
LOOPS.register("ppo", config=PpoConfig)(Loop(check_ppo, train_ppo))
