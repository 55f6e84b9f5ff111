"""The encoder-agent training loop: PPO over a pretrained text encoder on text environments.

Shaped like cleanrl's ppo.py: setup first, then one loop whose body is

    rollout (num_steps x num_envs transitions) -> advantage (registered GAE) -> update (epochs x
    minibatches: registered clip loss, registered value loss, entropy bonus) -> log -> checkpoint

The agent sees only strings: each environment's state description and its available actions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rltool import ckpt, own_pickles, train_backend
from rltool.actors.encoder_agent import EncoderAgent
from rltool.actors.token_encoder import TokenEncoder
from rltool.algos.gae import STEP_ADVANTAGES
from rltool.algos.losses import POLICY_LOSSES, LossParams
from rltool.algos.reward_scale import ReturnScaler
from rltool.algos.value_losses import VALUE_LOSSES, ValueLossParams
from rltool.config import Config, ConfigError
from rltool.loops import PpoConfig
from rltool.envs.text_gym import make_vector_env
from rltool.guard import StepGuard
from rltool.metrics import MetricsLog
from rltool.plot import plot_run
from rltool.run_start import config_yaml, start_run
from rltool.watchdog import deadline

DRIFT_KEYS = ("seed", "env.name", "trainer.num_envs", "algo.ppo.num_steps", "algo.ppo.norm_reward")
ACTOR_DRIFT_KEYS = ("path", "heads", "encoder.trainable_layers")
"""What a checkpoint of this loop fixed: a resume that changes one is warned (rltool/run_start.py)."""
AGENT = "agent.pt"
"""The agent's part of a checkpoint: pooling, heads and fine-tuned encoder layers (state_dict)."""
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
    """Returns the last eval's metrics (eval/reward, eval/success, eval/len): a multirun tables them."""
    # ---- setup: sizes, seed, run dir, envs, agent, optimizer, resume ----
    p, t = cfg.algo.ppo, cfg.trainer
    batch_size = p.num_steps * t.num_envs  # transitions per rollout
    minibatch_size = batch_size // p.num_minibatches
    num_iterations = max(1, t.total_env_steps // batch_size)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    device = "cuda" if cfg.hardware.device != "cpu" and torch.cuda.is_available() else "cpu"
    saved = saved_agent(cfg, device)  # None for a fresh run
    run = start_run(cfg, DRIFT_KEYS, ACTOR_DRIFT_KEYS)  # seed, run dir (resume: the run continued), config.yaml, log
    run_dir, resume_from, log = run.run_dir, run.resume_from, run.log
    print(f"ppo: {num_iterations} rollouts of {p.num_steps} steps x {t.num_envs} envs = {batch_size} transitions, "
          f"{p.update_epochs} epochs x {p.num_minibatches} minibatches of {minibatch_size}; "
          f"{num_iterations * batch_size} env steps; device {device}")

    envs = make_vector_env(cfg.env, t.num_envs)
    next_obs, info = envs.reset(seed=cfg.seed)
    num_actions = len(info["actions"][0])
    encoder = TokenEncoder(cfg.lead_actor.path, cfg.lead_actor.encoder, device)
    agent = EncoderAgent(encoder, cfg.lead_actor.heads, num_actions).to(device)
    heads = [p_ for n, p_ in agent.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": heads, "lr": p.lr}]
    if len(encoder.top):  # fine-tuned encoder layers: their own learning rate
        groups.append({"params": list(encoder.top.parameters()), "lr": cfg.lead_actor.encoder.lr})
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
        start, global_step = state["step"], state["global_step"]
        if scaler and "reward_scale" in state:  # else norm_reward was off in the run resumed: start counting
            scaler.load_state_dict(state["reward_scale"])
        ckpt.set_rng_states(state["rng"])
        print(f"resumed from {resume_from} at rollout {start} ({global_step} env steps)")

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

            if episodes["return"]:  # a rollout shorter than an episode may end none
                metrics |= episode_metrics(episodes, ROLLOUT_NAMES) | {"rollout/episodes": len(episodes["return"])}
            metrics["encoder/cache_hit_rate"] = encoder.cache.hit_rate()
            metrics["encoder/cache_size"] = len(encoder.cache)
            encoder.cache.reset_stats()
            metrics["perf/lr"] = optimizer.param_groups[0]["lr"]
            metrics["perf/env_steps_per_s"] = batch_size / (time.perf_counter() - started)
            metrics["time/elapsed"] = time.perf_counter() - t0  # since this process started (a resume restarts it)
            log.log(global_step, metrics)
            print(f"rollout {iteration + 1}/{num_iterations} | {global_step} steps | "
                  + " | ".join(f"{label} {metrics[k]:.3g}" for label, k in SHOWN if k in metrics), flush=True)
            guard.check(iteration + 1, metrics)  # before the save: the last good checkpoint stays the newest

            if (t.save_every and (iteration + 1) % t.save_every == 0) or iteration + 1 == num_iterations:
                save(run_dir, iteration + 1, global_step, agent, optimizer, envs, next_obs, info, ep_return, ep_len, cfg,
                     scaler)

        final_metrics = run_eval(agent, cfg, global_step, log)
    envs.close()
    plot_run(run_dir)
    print(f"done: {run_dir}")
    return final_metrics


def saved_agent(cfg: Config, device: str) -> dict | None:
    """The resumed checkpoint's agent.pt, read before the run starts (and rewrites config.yaml) and before the
    encoder loads: heads trained on standardised features cannot continue on raw ones, nor the reverse."""
    if not cfg.resume:
        return None
    saved = torch.load(ckpt.resolve_checkpoint(cfg.resume) / AGENT, map_location=device, weights_only=True)
    saved_norm = "running" if "feature_norm.mean" in saved else "none"
    if saved_norm != cfg.lead_actor.heads.feature_norm:
        raise ConfigError(f"resume={cfg.resume}: the checkpoint was trained with actors.heads.feature_norm="
                          f"{saved_norm}; resume with actors.heads.feature_norm={saved_norm}")
    return saved


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
            grad_norm = train_backend.step(agent, optimizer, p.max_grad_norm)  # nan/inf: skipped, weights untouched
            step = {"loss/policy": pg.detach(), "loss/value": v.detach(), "policy/entropy": ent.detach(),
                    "policy/grad_norm": grad_norm} | pm | vm
            for k, x in step.items():  # .item(): one sync per minibatch; these are CPU tensors here
                sums[k] = sums.get(k, 0.0) + float(x)
            count += 1
            last_kl = float(pm["policy/approx_kl"])
        if p.target_kl is not None and last_kl > p.target_kl:
            break
    metrics = {k: s / count for k, s in sums.items()}
    metrics["update/epochs"] = epoch + 1
    metrics["update/skipped_nonfinite"] = train_backend.pop_skipped_nonfinite()  # read by the StepGuard
    var = float(b_returns.var())
    metrics["value/explained_var"] = float("nan") if var == 0 else 1 - float((b_returns - b_values).var()) / var
    return metrics


ROLLOUT_NAMES = {"return": "reward/mean", "success": "reward/success", "length": "rollout/len"}
EVAL_NAMES = {"return": "eval/reward", "success": "eval/success", "length": "eval/len"}
"""The LM loop's names for the same quantities: an episode's return is its reward (unscaled), its length
counts environment steps (the LM loop's counts tokens)."""
SHOWN = (("return", "reward/mean"), ("success", "reward/success"), ("value", "loss/value"),
         ("entropy", "policy/entropy"), ("cache_hit_rate", "encoder/cache_hit_rate"),
         ("env_steps_per_s", "perf/env_steps_per_s"))
"""The progress line's fields: (label, metric)."""


def episode_metrics(episodes: dict[str, list[float]], names: dict[str, str]) -> dict[str, float]:
    """Means over the episodes that ended (at least one), under `names`."""
    return {names[k]: float(np.mean(v)) for k, v in episodes.items()}


def run_eval(agent: EncoderAgent, cfg: Config, global_step: int, log: MetricsLog) -> dict[str, float]:
    """Greedy play on fresh environments, algo.ppo.eval_episodes episodes shared evenly between them, each cut
    off after algo.ppo.eval_max_steps. Training environments and the RNGs training draws from are untouched."""
    p = cfg.algo.ppo
    envs = make_vector_env(cfg.env, cfg.trainer.num_envs, max_episode_steps=p.eval_max_steps)
    with deadline("eval", global_step, cfg.rollout.timeout_s):
        episodes = greedy_episodes(agent, envs, p.eval_episodes, cfg.seed + EVAL_SEED_OFFSET)
    envs.close()
    metrics = episode_metrics(episodes, EVAL_NAMES)
    metrics["eval/reward_stderr"] = float(np.std(episodes["return"]) / np.sqrt(len(episodes["return"])))
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
    """checkpoints/step_N/ (N = rollouts done) through the LM loop's writer (rltool/ckpt.py `commit_checkpoint`:
    trainer_state.pt with the step and RNGs, config.yaml, fsynced, renamed into place, `latest`, pruning), plus
    this loop's own: agent.pt (heads and fine-tuned layers; the frozen encoder is actors.path), optimizer.pt,
    and in trainer_state.pt the environments' states and counters. trainer_state.pt is plain data: each
    environment's state is its pickle as bytes, signed (rltool/own_pickles.py)."""
    def write(tmp: Path, main: bool) -> None:
        torch.save(agent.state_dict(), tmp / AGENT)
        ckpt.save_optimizer(tmp, optimizer)

    env_states = envs.call("get_state")  # pickles of the user's environment objects (position, hand, RNG)
    state = {"global_step": global_step, "envs": list(env_states),
             "envs_signature": [own_pickles.sign(b) for b in env_states], "next_obs": list(next_obs),
             "next_info": plain(info), "ep_return": ep_return.copy(), "ep_len": ep_len.copy()}
    if scaler:
        state["reward_scale"] = scaler.state_dict()
    return ckpt.commit_checkpoint(run_dir, iteration, write, trainer_state=state, config_yaml=config_yaml(cfg),
                                  keep_last=cfg.trainer.keep_last)


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

