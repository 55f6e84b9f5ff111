"""Encoder agent vs the standard peer: rltool's PPO over MiniLM-read text against stable-baselines3 PPO on
each environment's native observation (one-hot state index; Blackjack's tuple flattened to one-hots).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python scripts/bench_ppo.py --envs frozenlake blackjack
    .venv/bin/python scripts/bench_ppo.py --rltool-run blackjack=/tmp/runs/blackjack   # reuse a finished run

Same environment, env-step budget, seed, rollout shape (envs x steps), epochs (4), minibatches (4), lr
2.5e-4 annealed, gamma, GAE lambda 0.95, clip 0.2, entropy bonus, value 0.5, grad clip 0.5 (cleanrl's
defaults, which both follow, with the per-environment changes in ENVS applied to both). Both value losses
are unclipped MSE (rltool's algo.ppo.value_loss=mse, SB3's clip_range_vf=None).

What the peer observes (--peer-obs): `text` (the default) gives it what the description names, as one-hots
beside the state index: each neighbouring tile's kind on FrozenLake and CliffWalking; the taxi's row and
column, the passenger's place, the destination and the walls on Taxi (Blackjack's tuple is already all its
text says). `index` is the bare one-hot state index, which names no neighbour.
Both evaluate greedily on the same number of episodes. Reported per env and learner: final mean
return, success rate, wall seconds, and seconds per env step. Needs `pip install -e '.[bench]'`.
Numbers on a shared machine are noisy: the load average is recorded next to them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from rltool.schemas import env_config

REPO = Path(__file__).resolve().parent.parent

# name -> (rltool overrides, gymnasium id, gym kwargs, env steps, eval episodes, max_episode_steps or None)
ENVS = {
    "frozenlake": (["env=frozenlake_text"], "FrozenLake-v1", {"map_name": "4x4", "is_slippery": False}, 100_000, 1000, None),
    "frozenlake_slippery": (["env=frozenlake_text", "env.slippery=true", "algo.ppo.gamma=0.999", "trainer.num_envs=16"],
                            "FrozenLake-v1", {"map_name": "4x4", "is_slippery": True}, 600_000, 1000, None),
    "blackjack": (["env=blackjack_text"], "Blackjack-v1", {"sab": True}, 200_000, 10_000, None),
    # a uniform policy reaches the goal in 2% of 200-step episodes, 6% of 500-step ones: long episodes find it;
    # scaled rewards (returns of -100s) and unnormalised advantages (the entropy bonus keeps its weight, so the
    # policy still tries the cliff-edge row once it avoids stepping down) find the 13-step path
    "cliffwalking": (["env=cliffwalking_text", "env.max_episode_steps=500", "algo.ppo.norm_reward=true",
                      "algo.ppo.norm_adv=false", "trainer.num_envs=32", "algo.ppo.num_steps=32"],
                     "CliffWalking-v1", {}, 300_000, 4, 500),
    "taxi": (["env=taxi_text"], "Taxi-v4", {}, 300_000, 100, None),
}


def ppo_overrides(overrides: list[str]) -> dict:
    """The PPO settings an rltool override list changes, for the peer (gamma, ent_coef, num_envs, num_steps,
    norm_adv, norm_reward)."""
    out = {"gamma": 0.99, "ent_coef": 0.01, "num_envs": 8, "num_steps": 128, "norm_adv": True, "norm_reward": False}
    for o in overrides:
        key, _, value = o.partition("=")
        if key in ("algo.ppo.gamma", "algo.ppo.ent_coef"):
            out[key.split(".")[-1]] = float(value)
        elif key in ("trainer.num_envs", "algo.ppo.num_steps"):
            out[key.split(".")[-1]] = int(value)
        elif key in ("algo.ppo.norm_adv", "algo.ppo.norm_reward"):
            out[key.split(".")[-1]] = value == "true"
    return out


def run_rltool(name: str, seed: int, run_dir: Path | None) -> dict:
    overrides, _, _, steps, episodes, _ = ENVS[name]
    if run_dir is None:
        run_dir = REPO / "bench_results" / f"ppo_{name}_seed{seed}"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rltool.cli", "train", "algo=encoder_ppo", "actors=minilm_agent", *overrides,
                        f"trainer.total_env_steps={steps}", f"algo.ppo.eval_episodes={episodes}", f"seed={seed}",
                        f"hydra.run.dir={run_dir}"], check=True, cwd=REPO)
        wall = time.perf_counter() - started
    else:
        wall = None
    from rltool.metrics import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")  # one row per step: a resumed run re-logs some steps
    final = [r for r in rows if "eval/reward" in r][-1]
    trained = [r for r in rows if "reward/mean" in r]
    env_steps = trained[-1]["step"]
    if wall is None:  # a reused run: the sum of its rollouts' times (evals excluded)
        starts = [0] + [r["step"] for r in trained[:-1]]
        wall = sum((r["step"] - s0) / r["perf/env_steps_per_s"] for s0, r in zip(starts, trained))
    return {"return": final["eval/reward"], "success": final.get("eval/success"), "env_steps": env_steps,
            "wall_s": round(wall, 1), "s_per_env_step": wall / env_steps, "run_dir": str(run_dir)}


def text_features(name: str):
    """state index -> the one-hot features of what the text environment's description says about it, or None
    where the native observation already says it all (Blackjack)."""
    import numpy as np

    from rltool.envs.text_gym import TEXT_ENVS, cliffwalking

    def one_hot(i: int, n: int) -> list[float]:
        return [float(i == j) for j in range(n)]

    if name.startswith("frozenlake"):
        lake = TEXT_ENVS["frozenlake_text"](env_config(name="frozenlake_text", map_size="4x4"))
        kinds = ["the start", "frozen ice", "a hole", "the goal", "the edge of the lake"]
        around = lambda r, c: [lake.tile(r + dr, c + dc) for dr, dc in MOVES]  # noqa: E731
        cols = lake.n
    elif name == "cliffwalking":
        kinds = ["safe ground", "the cliff", "the start", "the goal", "the edge of the world"]
        around = lambda r, c: [cliffwalking.tile(r + dr, c + dc) for dr, dc in MOVES]  # noqa: E731
        cols = cliffwalking.COLS
    elif name == "taxi":
        taxi = TEXT_ENVS["taxi_text"](env_config(name="taxi_text"))

        def taxi_features(s: int) -> np.ndarray:
            r, c, passenger, dest = taxi.env.unwrapped.decode(s)
            walls = [float(taxi.map[r + 1, col] == b"|") for col in (2 * c + 2, 2 * c)]  # east, west
            return np.array(one_hot(r, 5) + one_hot(c, 5) + one_hot(passenger, 5) + one_hot(dest, 4) + walls,
                            dtype=np.float32)

        return taxi_features
    else:
        return None
    return lambda s: np.array([x for tile in around(*divmod(int(s), cols)) for x in one_hot(kinds.index(tile), len(kinds))],
                              dtype=np.float32)


MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right: the order the descriptions name them


def run_sb3(name: str, seed: int, peer_obs: str = "text") -> dict:
    import gymnasium as gym
    import numpy as np
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:  # the peer is a benchmark-only dependency, not part of `make setup`
        raise SystemExit("bench_ppo.py: stable-baselines3 is not installed; pip install -e '.[bench]'") from None

    overrides, env_id, kwargs, steps, episodes, limit = ENVS[name]
    s = ppo_overrides(overrides)

    features = text_features(name) if peer_obs == "text" else None

    def make():
        env = gym.make(env_id, **kwargs, **({"max_episode_steps": limit} if limit else {}))
        if isinstance(env.observation_space, gym.spaces.Tuple):
            return gym.wrappers.FlattenObservation(env)
        if features is None:
            return env
        n = env.observation_space.n  # one-hot index, then what the description names about that state
        space = gym.spaces.Box(0.0, 1.0, (n + len(features(0)),), np.float32)
        return gym.wrappers.TransformObservation(
            env, lambda s: np.concatenate([np.eye(n, dtype=np.float32)[int(s)], features(int(s))]), space)

    envs = make_vec_env(make, n_envs=s["num_envs"], seed=seed)
    if s["norm_reward"]:  # rltool's algo.ppo.norm_reward is this: rewards / running std of the discounted return
        from stable_baselines3.common.vec_env import VecNormalize

        envs = VecNormalize(envs, norm_obs=False, norm_reward=True, gamma=s["gamma"])
    batch = s["num_steps"] * s["num_envs"]
    model = PPO("MlpPolicy", envs, n_steps=s["num_steps"], batch_size=batch // 4, n_epochs=4, learning_rate=lambda f: 2.5e-4 * f,
                gamma=s["gamma"], gae_lambda=0.95, clip_range=0.2, ent_coef=s["ent_coef"], vf_coef=0.5,
                normalize_advantage=s["norm_adv"],
                max_grad_norm=0.5, seed=seed, device="cpu", verbose=0)
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - started
    env, returns, wins = make(), [], []
    for i in range(episodes):  # greedy, as rltool's eval
        obs, _ = env.reset(seed=seed + 1_000_003 + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total, done = total + reward, terminated or truncated
        returns.append(total)
        wins.append(terminated and (reward > 0 or name in ("cliffwalking", "taxi")))  # as the text envs count it
    return {"return": float(np.mean(returns)), "success": float(np.mean(wins)), "env_steps": model.num_timesteps,
            "wall_s": round(wall, 1), "s_per_env_step": wall / model.num_timesteps, "obs": peer_obs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rltool-run", nargs="*", default=[], metavar="ENV=RUN_DIR",
                   help="reuse a finished `rltool train` run instead of training again")
    p.add_argument("--skip-rltool", action="store_true", help="only the stable-baselines3 peer")
    p.add_argument("--skip-sb3", action="store_true", help="only rltool")
    p.add_argument("--peer-obs", choices=["text", "index"], default="text",
                   help="text: the state index plus what the description names (neighbouring tiles...); index: bare one-hot")
    p.add_argument("--out", default="bench_results/ppo.json", help="rows are merged into an existing file")
    args = p.parse_args()
    reuse = dict(r.split("=", 1) for r in args.rltool_run)
    out = REPO / args.out
    result = json.loads(out.read_text()) if out.is_file() else {"cpus": os.cpu_count(), "seed": args.seed, "envs": {}}
    for name in args.envs:
        row = result["envs"].setdefault(name, {})
        row |= {"env_steps_budget": ENVS[name][3], "eval_episodes": ENVS[name][4]}
        if not args.skip_rltool:
            row["rltool"] = run_rltool(name, args.seed, Path(reuse[name]) if name in reuse else None)
            row["rltool"]["load_avg_after"] = os.getloadavg()
        if not args.skip_sb3:
            key = "sb3" if args.peer_obs == "text" else "sb3_index_only"
            row[key] = run_sb3(name, args.seed, args.peer_obs)
            row[key]["load_avg_after"] = os.getloadavg()
        print(name, json.dumps(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every env: a long run keeps what it finished
    print(f"written: {out}")


if __name__ == "__main__":
    main()
