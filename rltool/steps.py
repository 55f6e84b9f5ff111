"""The loop's phases after rollout, as plain functions over Samples and Batches.

logprobs -> advantage -> optimize. Each reads the registered pieces named in the config; none keeps
state between calls, so a micro-batch carries everything its loss needs.
"""
from __future__ import annotations

import torch

from rltool.actors.logprobs import completion_logp
from rltool.algos.advantages import ADVANTAGES
from rltool.algos.kl import KL_ESTIMATORS
from rltool.algos.losses import POLICY_LOSSES, LossParams, agg_loss, masked_mean, sft_loss
from rltool.batch import Batch
from rltool.config import Config
from rltool.samples import Sample


@torch.no_grad()
def logp_no_grad(model, batch: Batch, cfg: Config) -> torch.Tensor:
    parts = [completion_logp(model, mb.input_ids, mb.attention_mask, mb.prompt_width, cfg.rollout.temperature)[0]
             for mb in batch.split(cfg.trainer.micro_batch_size)]
    return torch.cat(parts)  # (B, T)


def compute_logprobs(model, ref_model, batch: Batch, cfg: Config) -> Batch:
    """old_logp only when iterations > 1: with one pass, old == current and the ratio is exactly 1,
    so we save a forward by using logp.detach() in the loss. ref_logp only when a KL term is on."""
    if cfg.algo.iterations > 1:
        batch.old_logp = logp_no_grad(model, batch, cfg)
    if ref_model is not None:
        batch.ref_logp = logp_no_grad(ref_model, batch, cfg)
    return batch


def compute_advantages(samples: list[Sample], batch: Batch, cfg: Config) -> None:
    """Fills `Sample.adv` (unless the rollout preset it) and `batch.adv`.

    KL in the reward (`kl_placement=reward`) subtracts kl_coef * sum_t KL_t from each reward first.
    """
    a = cfg.algo
    rewards = torch.tensor([s.reward if s.reward is not None else 0.0 for s in samples])  # (B,)
    valid = torch.tensor([s.reward is not None for s in samples])  # (B,)
    if batch.ref_logp is not None and a.kl_placement == "reward":
        kl = KL_ESTIMATORS[a.kl_estimator](batch.sample_logp, batch.ref_logp)  # (B, T)
        rewards = rewards - a.kl_coef * (kl * batch.mask).sum(-1)
    adv = ADVANTAGES[a.advantage](rewards, torch.tensor([s.group for s in samples]), valid)  # (B,)
    for i, s in enumerate(samples):
        if s.adv is None:
            s.adv = float(adv[i])
    batch.adv = torch.tensor([s.adv for s in samples])


def split_updates(samples: list[Sample], batch: Batch) -> list[Batch]:
    """One Batch per distinct `Sample.update`, in increasing order (ERL's split variant uses two)."""
    passes = sorted({s.update for s in samples})
    return [batch.select(torch.tensor([i for i, s in enumerate(samples) if s.update == u])) for u in passes]


def optimize(model, optimizer, batch: Batch, cfg: Config) -> dict[str, torch.Tensor]:
    """One optimizer step over the whole batch, accumulated over micro-batches.

    Normalisers (sequence and token counts) are totals over the step, so the summed micro-batch
    losses equal the configured aggregation of the full batch (agg_loss's contract).
    """
    a, t = cfg.algo, cfg.trainer
    params = LossParams(eps_low=a.clip_eps_low, eps_high=a.clip_eps_high, ratio_level=a.ratio_level)
    micro = batch.split(t.micro_batch_size)
    rl_mask, sft_mask = batch.rl_mask, batch.sft_mask
    rl_counts = dict(num_seqs=float(rl_mask.any(-1).sum()), num_tokens=float(rl_mask.sum()),
                     max_len=cfg.rollout.max_new_tokens, num_micro=len(micro))
    sft_counts = dict(rl_counts, num_seqs=float(sft_mask.any(-1).sum()), num_tokens=float(sft_mask.sum()))
    kl_in_loss = batch.ref_logp is not None and a.kl_placement == "loss"
    totals: dict[str, torch.Tensor] = {}

    optimizer.zero_grad(set_to_none=True)
    for mb in micro:
        logp, entropy = completion_logp(model, mb.input_ids, mb.attention_mask, mb.prompt_width,
                                        cfg.rollout.temperature, with_entropy=True)  # (b, T)
        old_logp = mb.old_logp if mb.old_logp is not None else logp.detach()
        token_loss, m = POLICY_LOSSES[a.loss](logp, old_logp, mb.adv, mb.rl_mask, params)  # (b, T)
        loss = agg_loss(token_loss * mb.loss_weight[:, None], mb.rl_mask, a.agg, **rl_counts)
        m["loss/policy"] = loss.detach()
        if kl_in_loss:
            kl = agg_loss(KL_ESTIMATORS[a.kl_estimator](logp, mb.ref_logp), mb.rl_mask, a.agg, **rl_counts)
            loss = loss + a.kl_coef * kl
            m["loss/kl"] = kl.detach()
        if mb.sft_mask.any():
            sft = agg_loss(sft_loss(logp) * mb.sft_weight[:, None], mb.sft_mask, a.agg, **sft_counts)
            loss = loss + sft
            m["loss/sft"] = sft.detach()
        if mb.ref_logp is not None:
            m["policy/ref_kl"] = masked_mean(KL_ESTIMATORS["k3"](logp.detach(), mb.ref_logp), mb.mask)
        m["policy/entropy"] = masked_mean(entropy, mb.mask)
        # KL(engine || trainer) on the sampled tokens: the rollout/training mismatch (vLLM vs HF kernels).
        m["policy/mismatch_kl"] = masked_mean(KL_ESTIMATORS["k3"](mb.sample_logp, logp.detach()), mb.rl_mask)
        loss.backward()
        for k, v in m.items():  # loss parts are already globally normalised: sum them; average the rest
            totals[k] = totals.get(k, 0.0) + (v if k.startswith("loss/") else v / len(micro))
    totals["policy/grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    optimizer.step()
    return totals


def rollout_metrics(samples: list[Sample], batch: Batch) -> dict[str, float]:
    scored = [s for s in samples if s.reward is not None and s.kind == "attempt"]  # comparable across algos
    lengths = batch.mask.sum(-1)  # (B,)
    return {
        "reward/mean": sum(s.reward for s in scored) / max(len(scored), 1),
        "reward/success": sum(s.success for s in scored) / max(len(scored), 1),
        "reward/unscored": float(sum(s.reward is None for s in samples)),
        "rollout/len": float(lengths.mean()),
        "rollout/truncated": sum(s.truncated for s in samples) / len(samples),
        "rollout/tokens": float(lengths.sum()),
        "rollout/samples": float(len(samples)),
    }
