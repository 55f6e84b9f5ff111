"""The encoder-agent training loop: PPO over a pretrained text encoder on text environments.

Shaped like cleanrl's ppo.py: setup first, then one loop whose body is

    rollout (num_steps x num_envs transitions) -> advantage (registered GAE) -> update (epochs x
    minibatches: registered clip loss, registered value loss, entropy bonus) -> log -> checkpoint

The agent sees only strings: each environment's state description and its available actions.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rltool import ckpt, own_pickles, parallel
from rltool.actors.encoder_agent import EncoderAgent
from rltool.actors.token_encoder import TokenEncoder
from rltool.algos.gae import STEP_ADVANTAGES
from rltool.algos.losses import POLICY_LOSSES, LossParams
from rltool.algos.reward_scale import ReturnScaler
from rltool.algos.value_losses import VALUE_LOSSES, ValueLossParams
from rltool.ckpt_commit import begin, finish
from rltool.config import Config, ConfigError, PpoConfig
from rltool.envs.text_gym import make_vector_env
from rltool.guard import StepGuard
from rltool.metrics import MetricsLog
from rltool.plot import plot_run
from rltool.watchdog import deadline

EVAL_SEED_OFFSET = 1_000_003
"""Eval environments are seeded seed + this, apart from the training ones, and re-seeded at every eval
so successive evals play the same episodes' randomness."""


@dataclass
class Rollout:
    """num_steps x num_envs transitions; tensors (T, N), strings as T lists of N."""

    states: list[list[str]]
    actions_text: list[list[tuple[str, ...]]]
    masks: list[np.ndarray]  # T arrays (N, A_t) bool
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor


def train(cfg: Config) -> dict[str, float]:
    """Returns the last eval's metrics (eval/return, eval/success, eval/length): a multirun tables them."""
    # ---- setup: sizes, seed, run dir, envs, agent, optimizer, resume ----
    p, t = cfg.algo.ppo, cfg.trainer
    batch_size = p.num_steps * t.num_envs  # transitions per rollout
    minibatch_size = batch_size // p.num_minibatches
    num_iterations = max(1, t.total_env_steps // batch_size)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    device = "cuda" if cfg.hardware.device != "cpu" and torch.cuda.is_available() else "cpu"
    run_dir, resume_from = Path(cfg.output_dir), None
    if cfg.resume:
        resume_from = ckpt.resolve_checkpoint(cfg.resume)
        run_dir = resume_from.parent.parent  # keep writing into the run being continued
        warn_config_drift(cfg, resume_from)
        saved = torch.load(resume_from / "agent.pt", map_location=device, weights_only=True)
        saved_norm = "running" if "feature_norm.mean" in saved else "none"
        if saved_norm != cfg.policy.heads.feature_norm:  # before the encoder loads: the heads expect other inputs
            raise ConfigError(f"resume={cfg.resume}: the checkpoint was trained with actors.heads.feature_norm="
                              f"{saved_norm}; resume with actors.heads.feature_norm={saved_norm}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    print(f"ppo: {num_iterations} rollouts of {p.num_steps} steps x {t.num_envs} envs = {batch_size} transitions, "
          f"{p.update_epochs} epochs x {p.num_minibatches} minibatches of {minibatch_size}; "
          f"{num_iterations * batch_size} env steps; device {device}")

    envs = make_vector_env(cfg.env, t.num_envs)
    next_obs, info = envs.reset(seed=cfg.seed)
    num_actions = len(info["actions"][0])
    encoder = TokenEncoder(cfg.policy.path, cfg.policy.encoder, device)
    agent = EncoderAgent(encoder, cfg.policy.heads, num_actions).to(device)
    heads = [p_ for n, p_ in agent.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": heads, "lr": p.lr}]
    if len(encoder.top):  # fine-tuned encoder layers: their own learning rate
        groups.append({"params": list(encoder.top.parameters()), "lr": cfg.policy.encoder.lr})
    base_lrs = [g["lr"] for g in groups]
    optimizer = torch.optim.Adam(groups, eps=1e-5)
    policy_loss, value_loss = POLICY_LOSSES[cfg.algo.loss], VALUE_LOSSES[p.value_loss]
    advantage = STEP_ADVANTAGES[cfg.algo.advantage]
    loss_params = LossParams(eps_low=cfg.algo.clip_eps_low, eps_high=cfg.algo.clip_eps_high)

    scaler = ReturnScaler(t.num_envs, p.gamma) if p.norm_reward else None
    guard = StepGuard.from_config(cfg)  # stops a run whose updates keep being nan (trainer.max_nonfinite_steps)
    start, global_step = 0, 0
    ep_return, ep_len = np.zeros(t.num_envs), np.zeros(t.num_envs, dtype=int)  # running episodes
    if resume_from:
        agent.load_state_dict(saved)
        ckpt.load_optimizer(resume_from, optimizer)
        state = ckpt.load_trainer_state(resume_from)
        restore_envs(envs, state, resume_from)  # position, hand, RNG of each environment mid-episode
        next_obs, info = state["next_obs"], state["next_info"]
        ep_return, ep_len = state["ep_return"], state["ep_len"]
        start, global_step = state["iteration"], state["global_step"]
        if scaler and "reward_scale" in state:  # else norm_reward was off in the run resumed: start counting
            scaler.load_state_dict(state["reward_scale"])
        ckpt.set_rng_state(state["rng"])
        print(f"resumed from {resume_from} at rollout {start} ({global_step} env steps)")

    log = MetricsLog(run_dir, enabled=True, logger=cfg.trainer.logger,
                     config=OmegaConf.to_container(OmegaConf.structured(cfg)), run_name=run_dir.name)
    eval_due = lambda it: it == num_iterations or (t.eval_every and it % t.eval_every == 0)  # noqa: E731
    final_metrics: dict[str, float] = {}
    t0 = time.perf_counter()

    # ---- the loop ----
    with log:
        for iteration in range(start, num_iterations):
            if eval_due(iteration):  # greedy on its own environments: draws from no RNG training uses
                final_metrics = run_eval(agent, cfg, global_step, log)
            started = time.perf_counter()
            if p.anneal_lr:  # linear to 0 over the run, every parameter group alike
                for g, lr in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = lr * (1.0 - iteration / num_iterations)

            with deadline("rollout", iteration + 1, cfg.rollout.timeout_s):  # a user env that hangs is named
                roll, next_obs, info, episodes = rollout(envs, agent, next_obs, info, ep_return, ep_len, p.num_steps,
                                                         scaler)
            global_step += batch_size
            adv, returns = advantage(roll.rewards, roll.values, roll.next_values, roll.terminated, roll.truncated,
                                     gamma=p.gamma, lam=p.gae_lambda)  # (T, N) each
            metrics = update(agent, optimizer, roll, adv, returns, p, policy_loss, value_loss, loss_params)
            agent.update_feature_norm([s for row in roll.states for s in row])  # the next rollout's statistics

            metrics |= episode_metrics(episodes, "rollout")
            metrics["encoder/cache_hit_rate"] = encoder.cache.hit_rate()
            metrics["encoder/cache_size"] = len(encoder.cache)
            encoder.cache.reset_stats()
            metrics["perf/lr"] = optimizer.param_groups[0]["lr"]
            metrics["perf/env_steps_per_s"] = batch_size / (time.perf_counter() - started)
            metrics["time/elapsed"] = time.perf_counter() - t0  # since this process started (a resume restarts it)
            log.log(global_step, metrics)
            print(f"rollout {iteration + 1}/{num_iterations} | {global_step} steps | "
                  + " | ".join(f"{k.split('/')[-1]} {metrics[k]:.3g}" for k in
                               ("rollout/return", "rollout/success", "loss/value", "policy/entropy",
                                "encoder/cache_hit_rate", "perf/env_steps_per_s") if k in metrics), flush=True)
            guard.check(iteration + 1, metrics)  # before the save: the last good checkpoint stays the newest

            if (t.save_every and (iteration + 1) % t.save_every == 0) or iteration + 1 == num_iterations:
                save(run_dir, iteration + 1, global_step, agent, optimizer, envs, next_obs, info, ep_return, ep_len, cfg,
                     scaler)

        final_metrics = run_eval(agent, cfg, global_step, log)
    envs.close()
    plot_run(run_dir)
    print(f"done: {run_dir}")
    return final_metrics


def candidates(info: dict, n: int) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """info from the vector env -> (n action lists, mask (n, A) bool padded with False to the longest)."""
    acts = [tuple(a) for a in info["actions"]]
    width = max(len(a) for a in acts)
    mask = np.zeros((n, width), dtype=bool)
    for i, m in enumerate(info["action_mask"]):
        mask[i, :len(m)] = m
    return acts, mask


@torch.no_grad()
def rollout(envs, agent: EncoderAgent, obs, info, ep_return: np.ndarray, ep_len: np.ndarray, num_steps: int,
            scaler: ReturnScaler | None = None):
    """Steps every environment num_steps times with sampled actions. Returns the Rollout, the next
    observations and info to continue from, and the episodes that ended ({return, length, success} lists).
    With a scaler, the Rollout's rewards are scaled; the episodes' returns are not."""
    N, device = envs.num_envs, next(agent.parameters()).device
    states, acts_text, masks = [], [], []
    actions, logp, values, rewards, term, trunc = (torch.zeros(num_steps, N) for _ in range(6))
    final_states: list[tuple[int, int, str]] = []  # (t, env, final description) of truncated episodes
    episodes: dict[str, list[float]] = {"return": [], "length": [], "success": []}
    for step in range(num_steps):
        obs = list(obs)
        cands, mask = candidates(info, N)
        action, lp, _, value = agent.get_action_and_value(obs, list(cands), torch.from_numpy(mask).to(device))
        states.append(obs)
        acts_text.append(cands)
        masks.append(mask)
        actions[step], logp[step], values[step] = action.cpu().float(), lp.cpu(), value.cpu()
        obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        scaled = scaler(reward, terminated | truncated) if scaler else reward
        rewards[step] = torch.as_tensor(scaled, dtype=torch.float32)
        term[step], trunc[step] = torch.as_tensor(terminated), torch.as_tensor(truncated)
        ep_return += reward
        ep_len += 1
        for i in np.flatnonzero(terminated | truncated):
            if truncated[i] and not terminated[i]:
                final_states.append((step, int(i), str(info["final_obs"][i])))
            final = info["final_info"]
            episodes["return"].append(float(ep_return[i]))
            episodes["length"].append(float(ep_len[i]))
            episodes["success"].append(float(bool(final["success"][i])) if "success" in final else 0.0)
            ep_return[i], ep_len[i] = 0.0, 0
    # V(s_{t+1}): the next step's V(s), except where the episode ended (final description) and after the last step
    next_values = torch.cat([values[1:], agent.get_value(list(obs)).cpu()[None]])  # (T, N)
    if final_states:  # truncated episodes bootstrap from their final state: one batched forward
        v = agent.get_value([s for _, _, s in final_states]).cpu()
        for (step, i, _), value in zip(final_states, v):
            next_values[step, i] = value
    roll = Rollout(states, acts_text, masks, actions.long(), logp, values, rewards, next_values,
                   term.bool(), trunc.bool())
    return roll, obs, info, episodes


def update(agent: EncoderAgent, optimizer, roll: Rollout, adv, returns, p: PpoConfig, policy_loss, value_loss,
           loss_params: LossParams) -> dict[str, float]:
    """p.update_epochs passes over the rollout in p.num_minibatches shuffled minibatches (cleanrl's order);
    adv and returns (T, N) from the advantage estimator."""
    device = next(agent.parameters()).device
    states = [s for row in roll.states for s in row]  # (B,) strings, step-major like .reshape(-1)
    acts = [a for row in roll.actions_text for a in row]
    width = max(m.shape[1] for m in roll.masks)  # text actions: lists may differ in length from step to step
    mask = torch.from_numpy(np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in roll.masks]))  # (B, A)
    b_actions, b_logp, b_values = roll.actions.reshape(-1), roll.logp.reshape(-1), roll.values.reshape(-1)
    b_adv, b_returns = adv.reshape(-1), returns.reshape(-1)
    B = len(states)
    mb = B // p.num_minibatches
    sums: dict[str, float] = {}
    count = 0
    for epoch in range(p.update_epochs):
        perm = torch.randperm(B)
        for lo in range(0, B - mb + 1, mb):
            idx = perm[lo:lo + mb]
            _, logp, entropy, value = agent.get_action_and_value(
                [states[i] for i in idx], [acts[i] for i in idx], mask[idx].to(device), action=b_actions[idx].to(device))
            a = b_adv[idx].to(device)  # (mb,)
            if p.norm_adv and a.numel() > 1:
                a = (a - a.mean()) / (a.std() + 1e-8)
            ones = torch.ones(len(idx), 1, device=device)  # one action per sample: T = 1
            pg, pm = policy_loss(logp[:, None], b_logp[idx].to(device)[:, None], a, ones, loss_params)
            pg = pg.mean()  # the clipped surrogate, negated inside the registered loss
            v, vm = value_loss(value, b_values[idx].to(device), b_returns[idx].to(device), ValueLossParams(p.value_clip))
            v = v.mean()
            ent = entropy.mean()
            loss = pg - p.ent_coef * ent + p.vf_coef * v
            optimizer.zero_grad()
            loss.backward()
            grad_norm = parallel.step(agent, optimizer, p.max_grad_norm)  # nan/inf: skipped, weights untouched
            step = {"loss/policy": pg.detach(), "loss/value": v.detach(), "policy/entropy": ent.detach(),
                    "perf/grad_norm": grad_norm} | pm | vm
            for k, x in step.items():  # .item(): one sync per minibatch; these are CPU tensors here
                sums[k] = sums.get(k, 0.0) + float(x)
            count += 1
            last_kl = float(pm["policy/approx_kl"])
        if p.target_kl is not None and last_kl > p.target_kl:
            break
    metrics = {k: s / count for k, s in sums.items()}
    metrics["update/epochs"] = epoch + 1
    metrics["update/skipped_nonfinite"] = parallel.pop_skipped_nonfinite()  # read by the StepGuard
    var = float(b_returns.var())
    metrics["value/explained_var"] = float("nan") if var == 0 else 1 - float((b_returns - b_values).var()) / var
    return metrics


def episode_metrics(episodes: dict[str, list[float]], prefix: str) -> dict[str, float]:
    if not episodes["return"]:
        return {}
    return {f"{prefix}/{k}": float(np.mean(v)) for k, v in episodes.items()} | {f"{prefix}/episodes": len(episodes["return"])}


def run_eval(agent: EncoderAgent, cfg: Config, global_step: int, log: MetricsLog) -> dict[str, float]:
    """Greedy play on fresh environments, algo.ppo.eval_episodes episodes shared evenly between them, each cut
    off after algo.ppo.eval_max_steps. Training environments and the RNGs training draws from are untouched."""
    p = cfg.algo.ppo
    envs = make_vector_env(cfg.env, cfg.trainer.num_envs, max_episode_steps=p.eval_max_steps)
    with deadline("eval", global_step, cfg.rollout.timeout_s):
        episodes = greedy_episodes(agent, envs, p.eval_episodes, cfg.seed + EVAL_SEED_OFFSET)
    envs.close()
    metrics = episode_metrics(episodes, "eval")
    metrics.pop("eval/episodes")
    metrics["eval/return_stderr"] = float(np.std(episodes["return"]) / np.sqrt(len(episodes["return"])))
    log.log(global_step, metrics)
    print(f"eval @ {global_step} steps ({len(episodes['return'])} episodes, greedy): "
          + " | ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items()), flush=True)
    return metrics


@torch.no_grad()
def greedy_episodes(agent: EncoderAgent, envs, count: int, seed: int) -> dict[str, list[float]]:
    """Argmax actions until environment i has finished its quota, (count + i) // num_envs episodes, as
    stable-baselines3's evaluate_policy: keeping the first `count` episodes to end from any environment
    would favour short episodes. Episodes past a quota are played but not kept."""
    n, device = envs.num_envs, next(agent.parameters()).device
    quota = np.array([(count + i) // n for i in range(n)])
    done = np.zeros(n, dtype=int)
    obs, info = envs.reset(seed=seed)
    ep_return, ep_len = np.zeros(n), np.zeros(n, dtype=int)
    episodes: dict[str, list[float]] = {"return": [], "length": [], "success": []}
    while (done < quota).any():
        cands, mask = candidates(info, n)
        action, _, _, _ = agent.get_action_and_value(list(obs), list(cands), torch.from_numpy(mask).to(device),
                                                     greedy=True)
        obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        ep_return += reward
        ep_len += 1
        for i in np.flatnonzero(terminated | truncated):
            if done[i] < quota[i]:
                final = info["final_info"]
                episodes["return"].append(float(ep_return[i]))
                episodes["length"].append(float(ep_len[i]))
                episodes["success"].append(float(bool(final["success"][i])) if "success" in final else 0.0)
                done[i] += 1
            ep_return[i], ep_len[i] = 0.0, 0
    return episodes


def save(run_dir: Path, iteration: int, global_step: int, agent, optimizer, envs, next_obs, info, ep_return, ep_len,
         cfg: Config, scaler: ReturnScaler | None = None) -> Path:
    """checkpoints/step_N/ (N = rollouts done): agent.pt (heads and fine-tuned layers; the frozen encoder is
    actors.path), optimizer.pt, trainer_state.pt (environment states, RNGs, counters), config.yaml; committed
    by rltool/ckpt_commit.py like every LM checkpoint (fsynced, renamed into place, `latest`, pruning).
    trainer_state.pt is plain data: each environment's state is its pickle as bytes, signed (rltool/own_pickles.py)."""
    root, name = run_dir / ckpt.CHECKPOINTS, ckpt.step_name(iteration)
    tmp = begin(root, name)
    torch.save(agent.state_dict(), tmp / "agent.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    env_states = envs.call("get_state")  # pickles of the user's environment objects (position, hand, RNG)
    state = {"iteration": iteration, "global_step": global_step, "rng": ckpt.rng_state(),
             "envs": list(env_states), "envs_signature": [own_pickles.sign(b) for b in env_states],
             "next_obs": list(next_obs), "next_info": plain(info), "ep_return": ep_return.copy(), "ep_len": ep_len.copy()}
    if scaler:
        state["reward_scale"] = scaler.state_dict()
    torch.save(state, tmp / ckpt.TRAINER_STATE)
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return finish(tmp, root / name, keep_last=cfg.trainer.keep_last)


def plain(x):
    """The vector env's info as plain data (numpy object arrays of action tuples -> lists): loadable with
    weights_only=True, and `candidates` reads lists as it reads arrays."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray) and x.dtype == object:
        return [plain(v) for v in x.tolist()]
    return x


def restore_envs(envs, state: dict, where: Path) -> None:
    """Each environment mid-episode as saved; a pickle this machine's rltool did not sign is refused unread."""
    for i, (env, blob, signature) in enumerate(zip(envs.envs, state["envs"], state["envs_signature"])):
        own_pickles.check(blob, signature, f"{where}: environment {i}'s state")
        env.set_state(blob)


def warn_config_drift(cfg: Config, ckpt_dir: Path) -> None:
    """The checkpoint holds the agent; a differing seed, environment or architecture is worth a warning."""
    saved, now = OmegaConf.load(ckpt_dir / "config.yaml"), OmegaConf.structured(cfg)
    for key in ("seed", "env.name", "actors.path", "actors.heads", "actors.encoder.trainable_layers",
                "trainer.num_envs", "algo.ppo.num_steps", "algo.ppo.norm_reward"):
        old, new = OmegaConf.select(saved, key), OmegaConf.select(now, key)
        if old != new:
            print(f"warning: resume: {key}={new!r} differs from the checkpoint's {old!r}")

