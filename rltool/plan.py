"""The batch plan printed before any work starts: derived sizes computed once, in one place."""
from __future__ import annotations

from rltool.config import Config


def batch_plan(cfg: Config, hw) -> str:
    t, r = cfg.trainer, cfg.rollout
    completions = t.prompts_per_step * t.group_size
    per_rank = completions // hw.num_processes
    micro_steps = max(1, per_rank // t.micro_batch_size)
    lines = [
        f"plan: {cfg.algo.name} on {cfg.env.name} with {cfg.actors.path} ({hw.device}, {hw.dtype}, "
        f"{hw.num_processes} process{'es' if hw.num_processes > 1 else ''}, engine={r.engine})",
        f"  prompts/step {t.prompts_per_step} x group {t.group_size} = {completions} completions/step",
        f"  per rank {per_rank} completions in {micro_steps} micro-batches of {t.micro_batch_size}",
        f"  optimizer steps per rollout {cfg.algo.iterations}; max tokens/step "
        f"{completions * (r.max_new_tokens + r.max_prompt_len):,} (prompt <= {r.max_prompt_len}, completion <= {r.max_new_tokens})",
        f"  {t.max_steps} steps, eval every {t.eval_every or 'end'}, checkpoint every {t.save_every or 'never'}",
    ]
    return "\n".join(lines)
