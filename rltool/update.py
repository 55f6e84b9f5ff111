"""The loop's phases after rollout, as plain functions over Samples and Batches.

logprobs -> advantage -> optimize. Each reads the registered pieces named in the config; none keeps
state between calls, so a micro-batch carries everything its loss needs.
"""
from __future__ import annotations

import torch

from rltool import dist, train_backend
from rltool.actors.logprobs import completion_logp
from rltool.algos.advantages import ADVANTAGES
from rltool.algos.group_stats import group_outcomes
from rltool.algos.kl import KL_ESTIMATORS, kl_importance_ratio
from rltool.algos.losses import EXTRA_LOSSES, POLICY_LOSSES, LossParams, StepCounts, agg_loss, masked_mean, sft_loss
from rltool.algos.mismatch import mismatch_weights
from rltool.records import Batch, Sample, token_advantages
from rltool.config import Config
from rltool.rewards.values import FLOAT32_INF


@torch.no_grad()
def logp_no_grad(model, batch: Batch, cfg: Config) -> torch.Tensor:
    T = batch.mask.shape[1]
    micro = [m.trimmed() for m in batch.split(cfg.trainer.micro_batch_size)]
    parts = [completion_logp(model, mb.input_ids, mb.attention_mask, mb.prompt_width, cfg.rollout.temperature,
                             impl=cfg.trainer.logprob_impl, chunk_size=cfg.trainer.logprob_chunk_size)[0]
             for mb in micro]
    for _ in range(train_backend.forward_count(len(micro), model) - len(micro)):  # ZeRO-3: forwards are collective
        completion_logp(model, micro[0].input_ids, micro[0].attention_mask, micro[0].prompt_width, 1.0,
                        impl=cfg.trainer.logprob_impl, chunk_size=cfg.trainer.logprob_chunk_size)
    return torch.cat([torch.nn.functional.pad(p, (0, T - p.shape[1])) for p in parts])  # (B, T), batch's device


def compute_logprobs(model, ref_model, batch: Batch, cfg: Config) -> Batch:
    """old_logp only when iterations > 1: with one pass, old == current and the ratio is exactly 1,
    so we save a forward by using logp.detach() in the loss. ref_logp only when a KL term is on."""
    if cfg.algo.iterations > 1:
        batch.old_logp = logp_no_grad(model, batch, cfg)
    if ref_model is not None and cfg.algo.kl_coef > 0:
        batch.ref_logp = logp_no_grad(ref_model, batch, cfg)
    return batch


def ref_kl_probe(ref_model, batch: Batch, cfg: Config) -> dict[str, float]:
    """KL(policy || base) over the first trainer.ref_kl_rows rows, k3 on the sampled tokens with the
    engine's log-probs as the policy's: how far training has moved from the base model, when no KL
    term is in the loss (one would put every row through the update, see `contributing_rows`)."""
    rows = batch.select(torch.arange(min(cfg.trainer.ref_kl_rows, len(batch))))
    ref_logp = logp_no_grad(ref_model, rows, cfg)  # (n, T)
    kl = KL_ESTIMATORS["k3"](rows.sample_logp.to(ref_logp.device), ref_logp)
    return {"policy/ref_kl": float(masked_mean(kl, rows.mask.to(ref_logp.device)))}


def compute_advantages(samples: list[Sample], batch: Batch, cfg: Config) -> None:
    """Fills `Sample.adv` (unless the rollout preset it, or set per-token advantages) and `batch.adv`
    (B, T): each row's outcome advantage broadcast over its trained tokens, or its per-token ones.

    KL in the reward (`kl_placement=reward`) subtracts kl_coef * sum_t KL_t from each reward first; a row
    whose advantage the rollout preset (r - b, ERL's r2) has the same amount taken off that advantage,
    since its return is the reward the penalty applies to.
    """
    a = cfg.algo
    for s in samples:  # a reward float32 cannot hold (nan, 1e39 from an env's own score) would make every
        if s.reward is not None and not abs(s.reward) < FLOAT32_INF:  # advantage nan: unscored, as None is
            s.reward = None  # (so reward/unscored counts it)
    rewards = torch.tensor([s.reward if s.reward is not None else 0.0 for s in samples])  # (B,)
    valid = torch.tensor([s.reward is not None for s in samples])  # (B,)
    penalty = torch.zeros(len(samples))  # (B,)
    if batch.ref_logp is not None and a.kl_placement == "reward":
        kl = KL_ESTIMATORS[a.kl_estimator](batch.sample_logp, batch.ref_logp)  # (B, T)
        penalty = a.kl_coef * (kl * batch.mask).sum(-1)  # (B,)
        rewards = rewards - penalty
    # Group members may sit on different ranks: estimate over every rank's samples, keep ours.
    groups = torch.tensor([s.group for s in samples])  # (B,) ids unique across ranks
    (all_rewards, offset), (all_groups, _), (all_valid, _) = (dist.gather_cat(x) for x in (rewards, groups, valid))
    adv = ADVANTAGES[a.advantage](all_rewards, all_groups, all_valid)[offset:offset + len(samples)]  # (B,)
    batch.adv = torch.zeros_like(batch.mask)  # (B, T)
    for i, s in enumerate(samples):
        preset = s.adv is not None or s.token_adv is not None
        if not preset:
            s.adv = float(adv[i])
        row = token_advantages(s) - (penalty[i] if preset else 0.0)
        batch.adv[i, :len(row)] = row * batch.mask[i, :len(row)]


def split_updates(samples: list[Sample], batch: Batch) -> list[Batch]:
    """One Batch per distinct `Sample.update`, in increasing order (ERL's split variant uses two)."""
    passes = sorted({s.update for s in samples})
    return [batch.select(torch.tensor([i for i, s in enumerate(samples) if s.update == u])) for u in passes]


def optimize(model, optimizer, batch: Batch, cfg: Config) -> dict[str, torch.Tensor]:
    """One optimizer step over the whole batch, accumulated over micro-batches.

    Normalisers (sequence and token counts) are totals over the step, so the summed micro-batch
    losses equal the configured aggregation of the full batch (agg_loss's contract). The loss is
        agg(policy * TIS * loss_weight) + kl_coef * agg(KL [* pi/pi_old]) + agg(sft_weight * NLL at T=1)
        [+ the rows' extra term, `Sample.extra_loss`]
    TIS (mismatch correction) reweights the policy term only: KL and SFT are not sampled estimates
    of the policy gradient, and relabelled rows (ERL distill) have no behaviour policy to correct for.
    """
    a, t = cfg.algo, cfg.trainer
    params = LossParams(eps_low=a.clip_eps_low, eps_high=a.clip_eps_high, ratio_level=a.ratio_level)
    kl_in_loss = batch.ref_logp is not None and a.kl_placement == "loss"
    # Normalisers count the whole batch; rows that cannot move the gradient are then left out of the
    # forward/backward (bnpo's per-micro-batch mean depends on the split, so it keeps every row).
    # The rest are sorted by length so each trimmed micro-batch carries little padding.
    live = batch if a.agg == "bnpo" else batch.select(by_length(batch, contributing_rows(batch, kl_in_loss)))
    micro = [mb.trimmed().to(model.device) for mb in live.split(t.micro_batch_size)]
    # ZeRO-3 ranks must all run as many forward/backward passes: pad with zero-weight repeats.
    passes = train_backend.forward_count(len(micro), model)
    padding = []
    if passes > len(micro):
        padding = [(live if micro else batch).select(torch.tensor([0])).trimmed().to(model.device)] * (passes - len(micro))
    rl_counts, sft_counts = step_counts(batch, len(micro), cfg.rollout.max_new_tokens)
    totals: dict[str, torch.Tensor] = {"update/rows": torch.tensor(float(len(live)))}

    train_backend.zero_grad(model, optimizer)
    if not passes:  # all advantages 0: the step is AdamW on zero gradients, exactly as if we had run them
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    scale = train_backend.loss_scale(model)
    for i, mb in enumerate(micro + padding):
        out = completion_logp(model, mb.input_ids, mb.attention_mask, mb.prompt_width, cfg.rollout.temperature,
                              with_entropy=True, with_t1=bool(mb.sft_mask.any()), impl=cfg.trainer.logprob_impl,
                              chunk_size=cfg.trainer.logprob_chunk_size)  # (b, T) each
        logp = out.logp
        old_logp = mb.old_logp if mb.old_logp is not None else logp.detach()
        token_loss, m = POLICY_LOSSES[a.loss](logp, old_logp, mb.adv, mb.rl_mask, params)  # (b, T)
        # TIS: the samples came from the engine's pi, not the trainer's pi_old; reweight per token/sequence.
        engine_mask = mb.rl_mask * mb.on_policy[:, None]  # (b, T): relabelled rows have no behaviour policy
        tis, tis_m = mismatch_weights(old_logp, mb.sample_logp, engine_mask, a.mismatch_level, a.mismatch_mode,
                                      a.mismatch_cap)  # (b, T)
        tis = torch.where(mb.on_policy[:, None], tis, torch.ones_like(tis))
        m |= tis_m
        loss = agg_loss(token_loss * tis * mb.loss_weight[:, None], mb.rl_mask, a.agg, rl_counts)
        m["loss/policy"] = loss.detach()
        if kl_in_loss:
            kl_tok = KL_ESTIMATORS[a.kl_estimator](logp, mb.ref_logp)  # (b, T)
            if a.kl_is_correction:  # the tokens came from pi_old: E_old[pi/pi_old * k] (TRL's bias correction)
                kl_tok = kl_tok * kl_importance_ratio(logp, old_logp, mb.rl_mask, a.ratio_level)
            kl = agg_loss(kl_tok, mb.rl_mask, a.agg, rl_counts)
            loss = loss + a.kl_coef * kl
            m["loss/kl"] = kl.detach()
        if mb.extra_loss:  # a term the rollout attached to its rows (AGRL's selection log-prob)
            extra, extra_m = EXTRA_LOSSES[mb.extra_loss](model, mb, cfg, rl_counts)
            loss = loss + extra
            m |= extra_m
        if out.logp_t1 is not None:  # internalization trains pi itself: temperature 1, not the sampler's
            sft = agg_loss(sft_loss(out.logp_t1) * mb.sft_weight[:, None], mb.sft_mask, a.agg, sft_counts)
            loss = loss + sft
            m["loss/sft"] = sft.detach()
        if mb.ref_logp is not None:
            m["policy/ref_kl"] = masked_mean(KL_ESTIMATORS["k3"](logp.detach(), mb.ref_logp), mb.mask)
        # Only the rows that carry gradient run this forward (see `contributing_rows`): the name says so.
        m["policy/entropy_trained"] = masked_mean(out.entropy, mb.mask)
        # KL(engine || trainer) on the sampled tokens: the rollout/training mismatch (vLLM vs HF kernels).
        m["policy/mismatch_kl"] = masked_mean(KL_ESTIMATORS["k3"](mb.sample_logp, logp.detach()), engine_mask)
        padded = i >= len(micro)
        train_backend.backward(model, loss * (0.0 if padded else scale), last=i == passes - 1)
        if padded:
            continue
        for k, v in m.items():  # loss parts are already globally normalised: sum them; average the rest
            totals[k] = totals.get(k, 0.0) + (v if k.startswith("loss/") else v / len(micro))
    totals["policy/grad_norm"] = train_backend.step(model, optimizer, t.grad_clip)
    return totals


def step_counts(batch: Batch, num_micro: int, max_len: int) -> tuple[StepCounts, StepCounts]:
    """Normalisers of the RL and SFT terms: totals over every rank (DeepSpeed averages gradients over
    ranks, and train_backend.loss_scale multiplies by the world size to turn that back into a sum)."""
    rl_mask, sft_mask = batch.rl_mask, batch.sft_mask
    total = lambda x: dist.sum_over_ranks(float(x))  # noqa: E731
    rows, micro = total(len(batch)), int(total(num_micro))
    rl = StepCounts(num_seqs=total(rl_mask.any(-1).sum()), num_rows=rows, num_tokens=total(rl_mask.sum()),
                    max_len=max_len, num_micro=micro)
    sft = StepCounts(num_seqs=total(sft_mask.any(-1).sum()), num_rows=rows, num_tokens=total(sft_mask.sum()),
                     max_len=max_len, num_micro=micro)
    return rl, sft


def contributing_rows(batch: Batch, kl_in_loss: bool) -> torch.Tensor:
    """Indices of rows whose loss has a gradient: a non-zero advantage, an SFT target, or a KL term.

    A clipped-surrogate token with advantage 0 has loss 0 and gradient 0 whatever its ratio, so with
    sparse rewards (most groups all-wrong) most of the batch is skipped at no change to the update.
    """
    rl_rows = batch.rl_mask.any(-1)  # (B,)
    keep = (rl_rows & ((batch.adv != 0).any(-1) | kl_in_loss)) | batch.sft_mask.any(-1)
    return keep.nonzero().squeeze(-1)


def by_length(batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """`rows` reordered by prompt + completion length (stable)."""
    return rows[batch.attention_mask[rows].sum(-1).argsort(stable=True)]


def rollout_metrics(samples: list[Sample]) -> dict[str, float]:
    scored = [s for s in samples if s.reward is not None and s.first_attempt]  # comparable across algos
    lengths = [sum(s.completion_mask) if s.completion_mask else len(s.completion_ids) for s in samples]  # trained tokens
    parts: dict[str, list[float]] = {}  # each reward's raw value over the first attempts it could score
    for s in samples:
        for name, value in s.info.get("reward_parts", {}).items() if s.first_attempt else ():
            if value is not None:
                parts.setdefault(f"reward/{name}", []).append(value)
    return group_outcomes(samples) | {name: sum(v) / len(v) for name, v in parts.items()} | {
        "reward/mean": sum(s.reward for s in scored) / max(len(scored), 1),
        "reward/success": sum(s.success for s in scored) / max(len(scored), 1),
        "reward/unscored": float(sum(s.reward is None for s in samples)),
        "rollout/len": sum(lengths) / max(len(samples), 1),
        "rollout/truncated": sum(s.truncated for s in samples) / max(len(samples), 1),
        "rollout/tokens": float(sum(lengths)),
        # generated this step (relabelled samples re-use another's tokens): the budget ERL and GRPO are matched on
        "rollout/gen_tokens": float(sum(sum(s.completion_mask) if s.completion_mask else len(s.completion_ids)
                                        for s in samples if not s.relabelled)),
        "rollout/samples": float(len(samples)),
    }
