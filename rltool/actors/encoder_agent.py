"""An encoder agent: reads text states with a pretrained encoder, acts with policy and value heads.

    description ──TokenEncoder──> tokens (B, T, H) ──AttentionPool──> (B, heads*H) ──MLPs──> value (B,)
                                                                                       └──> logits (B, A)

Actions are either a fixed set (one logit per environment action, actors.heads.actions=fixed) or
text (actions=text): each available action string is encoded and pooled the same way, and its logit
is the dot product of the projected state and the projected action, a bilinear score
s^T W_s^T W_a a. One policy then handles action sets that change from state to state, or that it
never saw. Unavailable actions (mask False, or padding in a shorter list) get a logit of float-min:
probability exactly 0.

The method names follow cleanrl's ppo.py `Agent`: `get_value`, `get_action_and_value`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from rltool.actors.feature_norm import RunningFeatureNorm
from rltool.actors.token_encoder import TokenEncoder
from rltool.config import HeadsConfig


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal init as cleanrl's ppo.py: sqrt(2) in hidden layers, 0.01 policy output, 1 value output."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [layer_init(nn.Linear(a, b)), nn.Tanh()]
    return nn.Sequential(*layers)


class AttentionPool(nn.Module):
    """tokens (B, T, H), mask (B, T) bool -> (B, heads*H): per head, softmax over the tokens of a
    learned query's dot products, then the weighted sum of the tokens. Masked tokens get weight
    exactly 0, so padding never changes the output (the softmax runs over T, never over a size-1 axis)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(heads, dim) / math.sqrt(dim))  # (heads, H)
        self.scale = 1 / math.sqrt(dim)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        scores = torch.einsum("bth,qh->bqt", tokens, self.query) * self.scale  # (B, heads, T)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, heads, T); 0 on masked tokens
        return torch.einsum("bqt,bth->bqh", weights, tokens).flatten(1)  # (B, heads*H)


class EncoderAgent(nn.Module):
    def __init__(self, encoder: TokenEncoder, heads: HeadsConfig, num_actions: int):
        super().__init__()
        self.encoder, self.text_actions = encoder, heads.actions == "text"
        self.pool = AttentionPool(encoder.dim, heads.pool_heads)
        sizes = [encoder.dim * heads.pool_heads, *heads.hidden]
        self.feature_norm = RunningFeatureNorm(sizes[0]) if heads.feature_norm == "running" else nn.Identity()
        self.trunk = mlp(sizes) if heads.shared_trunk else nn.Identity()
        self.actor_body = nn.Identity() if heads.shared_trunk else mlp(sizes)
        self.critic_body = nn.Identity() if heads.shared_trunk else mlp(sizes)
        self.critic = layer_init(nn.Linear(heads.hidden[-1], 1), std=1.0)
        if self.text_actions:
            self.state_proj = layer_init(nn.Linear(heads.hidden[-1], heads.action_dim), std=0.01)
            self.action_pool = AttentionPool(encoder.dim, 1)
            self.action_proj = layer_init(nn.Linear(encoder.dim, heads.action_dim), std=1.0)
        else:
            self.actor = layer_init(nn.Linear(heads.hidden[-1], num_actions), std=0.01)
        self.num_actions = num_actions

    def embed(self, texts: list[str], pool: AttentionPool) -> Tensor:
        """texts (B,) -> pooled (B, D). Each distinct text is encoded and pooled once, then gathered."""
        index = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        tokens, mask = self.encoder(list(index))  # (U, T, H), (U, T)
        pooled = pool(tokens, mask)  # (U, D)
        return pooled[torch.tensor([index[t] for t in texts], device=pooled.device)]  # (B, D)

    def features(self, states: list[str]) -> Tensor:
        x = self.feature_norm(self.embed(states, self.pool))  # (B, D)
        return self.trunk(x)  # (B, D) or (B, hidden[-1]) with a shared trunk

    @torch.no_grad()
    def update_feature_norm(self, states: list[str]) -> None:
        """actors.heads.feature_norm=running: fold these visited states' pooled features into the statistics."""
        if isinstance(self.feature_norm, RunningFeatureNorm):
            self.feature_norm.update(self.embed(states, self.pool))

    def get_value(self, states: list[str]) -> Tensor:
        return self.critic(self.critic_body(self.features(states))).squeeze(-1)  # (B,): never (B, 1)

    def logits(self, x: Tensor, actions: list[list[str]], mask: Tensor) -> Tensor:
        """x (B, D) features, actions B lists of strings, mask (B, A) bool -> (B, A), float-min where masked."""
        h = self.actor_body(x)  # (B, hidden)
        if self.text_actions:
            flat = [a for row in actions for a in row]
            a = self.action_proj(self.embed(flat, self.action_pool))  # (sum A_i, action_dim)
            A = mask.shape[1]
            cand = torch.zeros(len(actions), A, a.shape[-1], device=a.device)  # (B, A, action_dim)
            rows = torch.repeat_interleave(torch.arange(len(actions)), torch.tensor([len(r) for r in actions]))
            cols = torch.cat([torch.arange(len(r)) for r in actions])
            cand = cand.index_put((rows.to(a.device), cols.to(a.device)), a)
            logits = torch.einsum("bd,bad->ba", self.state_proj(h), cand)  # (B, A) bilinear scores
        else:
            logits = self.actor(h)  # (B, num_actions)
        return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)

    def get_action_and_value(self, states: list[str], actions: list[list[str]], mask: Tensor,
                             action: Tensor | None = None, greedy: bool = False):
        """-> action (B,), logp (B,), entropy (B,), value (B,). Given `action`, its log-prob under the
        current policy (the update); else a sample (or the argmax with greedy=True)."""
        x = self.features(states)
        dist = Categorical(logits=self.logits(x, actions, mask))
        if action is None:
            action = dist.probs.argmax(-1) if greedy else dist.sample()
        value = self.critic(self.critic_body(x)).squeeze(-1)  # (B,)
        return action, dist.log_prob(action), dist.entropy(), value
