"""The episode reward: how well the model predicts each value after reading what it chose.

  R = (1/T) sum_t mean_j log p(v_t,j | context_t, k_t)
where context_t is the t pairs picked before step t, in the order picked. Only value tokens are
scored; keys are given. The trained signal is R_policy - R_baseline (the frozen base model on the
same ordering, or the policy on a random ordering: the caller's choice, `agrl.baseline`).

Input layout, token ids (prefix and sep are optional, e.g. a BOS token and a newline):
  step t:   prefix k_1 v_1 sep k_2 v_2 sep ... k_{t-1} v_{t-1} sep k_t v_t
  episode:  prefix k_1 v_1 sep ... sep k_T v_T        (the step-T input)
The value positions are the indices of v_t's own tokens. In a causal LM the logits at position
j - 1 predict token j, and v_t's log-probs in the episode sequence condition on exactly the
step-t context, so one forward pass per episode gives all T steps' rows (T times cheaper than T
passes; `step_input` exists for callers who want the per-step form, and the tests check the two
agree).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from rltool.agrl.kv import KVPair


def step_input(
    picked: Sequence[KVPair], next_pair: KVPair, prefix: Sequence[int] = (), sep: Sequence[int] = ()
) -> tuple[list[int], list[int]]:
    """-> (ids, positions of next_pair's value tokens in ids) after len(picked) picks."""
    ids, positions = episode_input([*picked, next_pair], prefix, sep)
    return ids, positions[-1]


def episode_input(
    ordered: Sequence[KVPair], prefix: Sequence[int] = (), sep: Sequence[int] = ()
) -> tuple[list[int], list[list[int]]]:
    """-> (ids, value positions of each step t) for pairs in the order they were picked."""
    ids = list(prefix)
    positions = []
    for t, pair in enumerate(ordered):
        if t > 0:
            ids += sep
        ids += pair.key
        positions.append(list(range(len(ids), len(ids) + len(pair.value))))
        ids += pair.value
    return ids, positions


def pad_positions(rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Ragged position lists -> positions (N, V) long, padded with 1, and mask (N, V) bool."""
    V = max((len(r) for r in rows), default=0)
    positions = torch.ones(len(rows), V, dtype=torch.long)  # (N, V); 1 is a harmless pad index
    mask = torch.zeros(len(rows), V, dtype=torch.bool)  # (N, V)
    for i, r in enumerate(rows):
        positions[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return positions, mask


def gather_value_logp(logits: Tensor, ids: Tensor, positions: Tensor) -> Tensor:
    """logits (N, L, vocab), ids (N, L), positions (N, ...) of scored tokens -> log p, positions' shape.

    log p(ids[j]) = log_softmax(logits[j - 1])[ids[j]]: a causal LM's prediction for token j
    sits one position earlier. Positions must be >= 1 (the first token has no prediction).
    Only the rows of logits needed are normalised, not all L. With one sequence per episode,
    positions (E, T, V) from `pad_positions` give (E, T, V); `.view(E * T, V)` gives the rows
    `step_value_logp` takes.
    """
    if bool((positions < 1).any()):
        raise ValueError("a scored position is 0; the first token of a sequence has no prediction")
    flat = positions.reshape(positions.shape[0], -1)  # (N, P)
    prev = (flat - 1)[..., None].expand(-1, -1, logits.shape[-1])  # (N, P, vocab)
    logp_all = torch.log_softmax(logits.gather(1, prev).float(), -1)  # (N, P, vocab)
    target = ids.gather(1, flat)  # (N, P)
    return logp_all.gather(-1, target[..., None]).squeeze(-1).view(positions.shape)


def step_value_logp(value_logp: Tensor, mask: Tensor, steps: int) -> Tensor:
    """value_logp, mask (E * T, V), rows episode-major (row e * T + t) -> mean over each row's
    value tokens, (E, T). Every row needs at least one value token: a silent 0 would be a reward."""
    if value_logp.shape[0] % steps:
        raise ValueError(f"{value_logp.shape[0]} rows is not a multiple of steps={steps}")
    n = mask.sum(-1)  # (E * T,)
    if bool((n == 0).any()):
        raise ValueError("a (episode, step) row has no value token")
    # where, not multiply: padded entries may hold -inf or nan
    total = torch.where(mask, value_logp, torch.zeros_like(value_logp)).sum(-1)  # (E * T,)
    return (total / n).view(-1, steps)  # (E, T)


def episode_reward(value_logp: Tensor, mask: Tensor, steps: int) -> Tensor:
    """R (E,) = (1/T) sum_t mean_token log p(v_t | context_t, k_t); arguments as step_value_logp."""
    return step_value_logp(value_logp, mask, steps).mean(-1)


def relative_reward(policy_reward: Tensor, baseline_reward: Tensor) -> Tensor:
    """R_policy - R_baseline, (E,): positive when the chosen order helped more than the baseline's."""
    return policy_reward - baseline_reward
