"""The loop's phases after rollout, as plain functions over Samples and Batches.

logprobs -> advantage -> optimize. Each reads the registered pieces named in the config; none keeps
state between calls, so a micro-batch carries everything its loss needs.
"""
from __future__ import annotations

import torch

from rltool import dist, parallel
from rltool.actors.logprobs import completion_logp
from rltool.algos.advantages import ADVANTAGES
from rltool.algos.kl import KL_ESTIMATORS
from rltool.algos.losses import POLICY_LOSSES, LossParams, agg_loss, masked_mean, sft_loss
from rltool.algos.mismatch import mismatch_weights
from rltool.batch import Batch
from rltool.config import Config
from rltool.samples import Sample


@torch.no_grad()
def logp_no_grad(model, batch: Batch, cfg: Config) -> torch.Tensor:
    T = batch.mask.shape[1]
    micro = [m.trimmed() for m in batch.split(cfg.trainer.micro_batch_size)]
    parts = [completion_logp(model, mb.input_ids, mb.attention_mask, mb.prompt_width, cfg.rollout.temperature)[0]
             for mb in micro]
    for _ in range(parallel.forward_count(len(micro), model) - len(micro)):  # ZeRO-3: forwards are collective
        completion_logp(model, micro[0].input_ids, micro[0].attention_mask, micro[0].prompt_width, 1.0)
    return torch.cat([torch.nn.functional.pad(p, (0, T - p.shape[1])) for p in parts])  # (B, T), batch's device


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
    # Group members may sit on different ranks: estimate over every rank's samples, keep ours.
    groups = torch.tensor([s.group for s in samples])  # (B,) ids unique across ranks
    (all_rewards, offset), (all_groups, _), (all_valid, _) = (dist.gather_cat(x) for x in (rewards, groups, valid))
    adv = ADVANTAGES[a.advantage](all_rewards, all_groups, all_valid)[offset:offset + len(samples)]  # (B,)
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
    rl_mask, sft_mask = batch.rl_mask, batch.sft_mask
    kl_in_loss = batch.ref_logp is not None and a.kl_placement == "loss"
    # Normalisers count the whole batch; rows that cannot move the gradient are then left out of the
    # forward/backward (bnpo's per-micro-batch mean depends on the split, so it keeps every row).
    # The rest are sorted by length so each trimmed micro-batch carries little padding.
    live = batch if a.agg == "bnpo" else batch.select(by_length(batch, contributing_rows(batch, kl_in_loss)))
    micro = [mb.trimmed().to(model.device) for mb in live.split(t.micro_batch_size)]
    # ZeRO-3 ranks must all run as many forward/backward passes: pad with zero-weight repeats.
    passes = parallel.forward_count(len(micro), model)
    padding = []
    if passes > len(micro):
        padding = [(live if micro else batch).select(torch.tensor([0])).trimmed().to(model.device)] * (passes - len(micro))
    # Step totals over every rank (DAPO's global token mean); DeepSpeed averages over ranks: parallel.loss_scale.
    rl_counts = dict(num_seqs=dist.sum_over_ranks(float(rl_mask.any(-1).sum())),
                     num_tokens=dist.sum_over_ranks(float(rl_mask.sum())),
                     max_len=cfg.rollout.max_new_tokens, num_micro=len(micro))
    sft_counts = dict(rl_counts, num_seqs=dist.sum_over_ranks(float(sft_mask.any(-1).sum())),
                      num_tokens=dist.sum_over_ranks(float(sft_mask.sum())))
    totals: dict[str, torch.Tensor] = {"update/rows": torch.tensor(float(len(live)))}

    parallel.zero_grad(model, optimizer)
    if not passes:  # all advantages 0: the step is AdamW on zero gradients, exactly as if we had run them
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    scale = parallel.loss_scale(model)
    for i, mb in enumerate(micro + padding):
        logp, entropy = completion_logp(model, mb.input_ids, mb.attention_mask, mb.prompt_width,
                                        cfg.rollout.temperature, with_entropy=True)  # (b, T)
        old_logp = mb.old_logp if mb.old_logp is not None else logp.detach()
        token_loss, m = POLICY_LOSSES[a.loss](logp, old_logp, mb.adv, mb.rl_mask, params)  # (b, T)
        # TIS: the samples came from the engine's pi, not the trainer's pi_old; reweight per token/sequence.
        tis, tis_m = mismatch_weights(old_logp, mb.sample_logp, mb.rl_mask, a.mismatch_level, a.mismatch_mode,
                                      a.mismatch_cap)  # (b, T)
        m |= tis_m
        loss = agg_loss(token_loss * tis * mb.loss_weight[:, None], mb.rl_mask, a.agg, **rl_counts)
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
        padded = i >= len(micro)
        parallel.backward(model, loss * (0.0 if padded else scale), last=i == passes - 1)
        if padded:
            continue
        for k, v in m.items():  # loss parts are already globally normalised: sum them; average the rest
            totals[k] = totals.get(k, 0.0) + (v if k.startswith("loss/") else v / len(micro))
    totals["policy/grad_norm"] = parallel.step(model, optimizer, t.grad_clip)
    return totals


def contributing_rows(batch: Batch, kl_in_loss: bool) -> torch.Tensor:
    """Indices of rows whose loss has a gradient: a non-zero advantage, an SFT target, or a KL term.

    A clipped-surrogate token with advantage 0 has loss 0 and gradient 0 whatever its ratio, so with
    sparse rewards (most groups all-wrong) most of the batch is skipped at no change to the update.
    """
    rl_rows = batch.rl_mask.any(-1)  # (B,)
    keep = (rl_rows & ((batch.adv != 0) | kl_in_loss)) | batch.sft_mask.any(-1)
    return keep.nonzero().squeeze(-1)


def by_length(batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """`rows` reordered by prompt + completion length (stable)."""
    return rows[batch.attention_mask[rows].sum(-1).argsort(stable=True)]


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
        # generated this step ("distill" samples re-use a retry's tokens): the budget ERL and GRPO are matched on
        "rollout/gen_tokens": float(sum(len(s.completion_ids) for s in samples if s.kind != "distill")),
        "rollout/samples": float(len(samples)),
    }
