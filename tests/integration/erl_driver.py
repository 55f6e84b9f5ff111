"""Run rltool's real training loop with ERL and record what happened, for test_erl_loop.py.

    python tests/integration/erl_driver.py RECORD.json key=value ...

Composes the config from conf/ with the overrides (as `rltool train` does), registers the
controlled reward `test_controlled`, and calls `rltool.train.train` on the embedded model with the
real vLLM engine and real optimizer steps. Nothing is replaced; pass-through wrappers record
  - every ERL rollout call: its step, the memory before and after, the samples it returned
    (their `adv` is read after the loop, which fills it in place), its metrics;
  - the Batch the loop collated from those samples (token ids, masks, prompt width);
  - the memory before and after every eval the loop runs;
  - vLLM's and the trainer's log-probs of one fixed completion before training and after every
    weight sync;
and RECORD.json is written when train() returns.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import asdict

LEVELS = (0.0, 0.5, 1.0, 1.0)
FEEDBACK_MARK = "[ctl-feedback]"
PROBE_QUESTION = "What is 12 + 34?"
PROBE_COMPLETION = " The answer is 46."


def controlled_reward(completion: str, example) -> tuple[float, str]:
    """Character count mod 4 -> 0.0, 0.5, 1.0, 1.0, with feedback text that names itself.

    Whatever the model writes, about half of all completions score 1.0 and half are below it, so
    every step has gated and non-gated attempts, failed and successful retries. 0.5 sits exactly
    on the default memory threshold and 1.0 on the default gate threshold (both strict).
    """
    n = len(completion)
    return LEVELS[n % 4], f"{FEEDBACK_MARK} {n} characters, {n % 4} mod 4"


class Recorder:
    def __init__(self):
        self.rollout = None
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.probes: list[dict] = []
        self.probe = None  # (prompt ids, completion ids)

    def memory(self) -> dict:
        return copy.deepcopy(self.rollout.state_dict())


def instrument(rec: Recorder) -> None:
    import torch

    from rltool import train as loop
    from rltool.actors import actor as actors_module
    from rltool.actors.logprobs import completion_logp
    from rltool.algos.erl import ERLRollout
    from rltool.engines.prompts import encode_chat
    from rltool.records import Sample

    init, call, collate, evaluate, sync = (ERLRollout.__init__, ERLRollout.__call__, loop.collate, loop.evaluate,
                                           actors_module.sync_weights)

    def recorded_init(self, ctx):
        init(self, ctx)
        rec.rollout = self
        tok = ctx.tokenizer
        rec.probe = (encode_chat(tok, [{"role": "user", "content": PROBE_QUESTION}], 256),
                     tok.encode(PROBE_COMPLETION, add_special_tokens=False))

    def recorded_call(self, step):
        if not rec.probes:  # the engine's weights before any update
            rec.probes.append({"after_step": None, "vllm": self.ctx.engine.prompt_logprobs(*rec.probe)})
        before = rec.memory()
        samples, metrics = call(self, step)
        rec.steps.append({"step": step, "memory_before": before, "memory_after": rec.memory(), "samples": samples,
                          "metrics": dict(metrics)})
        return samples, metrics

    def recorded_collate(samples, pad_id):
        batch = collate(samples, pad_id)
        rec.steps[-1]["batch"] = {"input_ids": batch.input_ids.tolist(), "mask": batch.mask.tolist(),
                                  "sft_mask": batch.sft_mask.tolist(), "rl_mask": batch.rl_mask.tolist(),
                                  "prompt_width": batch.prompt_width}
        return batch

    def recorded_evaluate(actors, env, cfg):
        before = rec.memory()
        out = evaluate(actors, env, cfg)
        rec.evals.append({"after_rollouts": len(rec.steps), "memory_before": before, "memory_after": rec.memory()})
        return out

    def recorded_sync(engine, model):
        sync(engine, model)
        prompt, completion = rec.probe
        b = collate([Sample(prompt, completion, [0.0] * len(completion), group=0, reward=0.0)], pad_id=0)
        with torch.no_grad():
            trainer = completion_logp(model, b.input_ids, b.attention_mask, b.prompt_width)[0][0].tolist()
        rec.probes.append({"after_step": rec.steps[-1]["step"], "vllm": engine.prompt_logprobs(prompt, completion),
                           "trainer": trainer})

    ERLRollout.__init__, ERLRollout.__call__ = recorded_init, recorded_call
    loop.collate, loop.evaluate, actors_module.sync_weights = recorded_collate, recorded_evaluate, recorded_sync


def sample_row(s, tok, examples) -> dict:
    row = asdict(s)
    row["prompt_text"] = tok.decode(s.prompt_ids)
    row["question"] = examples[s.example_id].question
    return row


def main(record_path: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from rltool.cli import conf_dir, rewrite_overrides, to_config
    from rltool.config import register_configs
    from rltool.rewards.registry import reward

    reward("test_controlled")(controlled_reward)
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=rewrite_overrides(overrides)))

    rec = Recorder()
    instrument(rec)
    from rltool.train import train

    result = train(cfg)

    tok, env = rec.rollout.ctx.tokenizer, rec.rollout.ctx.env
    examples = {e.id: e for e in env.train_examples()}
    steps = [dict(st, samples=[sample_row(s, tok, examples) for s in st["samples"]]) for st in rec.steps]
    record = {"result": result, "steps": steps, "evals": rec.evals, "probes": rec.probes,
              "final_memory": rec.memory(), "instruction": env.cfg.instruction}
    with open(record_path, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    # vLLM runs in-process (colocated with the trainer) and must see these before it is imported.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main(sys.argv[1], sys.argv[2:])
