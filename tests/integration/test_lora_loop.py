"""LoRA end to end on the embedded SmolLM2-135M with real vLLM, through the CLI.

A 2-step LoRA run (KL on, so the adapter-off reference runs too) trains only the adapter, writes a
merged final/ that loads as a plain HF model, and resumes from its step-1 checkpoint (vLLM starting
from the checkpoint's merged model/, the trainer from base + adapter/). Two engine starts: the run
and the resumed copy. vLLM following a LoRA step is in test_weight_sync.py.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rltool.actors.embedded import materialize
from rltool.actors.load import load_policy, load_tokenizer
from tests.integration.helpers import TINY, by_step, read_jsonl, rltool

pytestmark = pytest.mark.slow

STEPS = ["actors.lora.r=8", "algo.kl_coef=0.05", "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=2",
         "trainer.lr=1e-3", "seed=3", "eval.enabled=false"]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # all-linear on Llama


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lora")
    proc = rltool("train", *TINY, *STEPS, f"hydra.run.dir={run}")
    return run, proc


def test_steps_run_with_finite_losses_and_kl(lora_run):
    run, proc = lora_run
    assert "lora: r=8 alpha=16 on all-linear; trainable params" in proc.stdout
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss/policy" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("loss/policy", "loss/kl", "policy/grad_norm", "policy/ref_kl"):
            assert math.isfinite(r[key]), key
        assert r["loss/kl"] >= 0


def test_only_adapter_weights_changed(lora_run):
    run, _ = lora_run
    base = load_file(materialize() / "model.safetensors")
    final = load_file(run / "final" / "policy" / "model.safetensors")
    assert final.keys() == base.keys()
    frozen = [k for k in base if not any(m in k for m in LINEAR)]  # embeddings, norms
    assert frozen and all(torch.equal(base[k], final[k]) for k in frozen)
    assert any(not torch.equal(base[k], final[k]) for k in base if any(m in k for m in LINEAR))
    ckpts = run / "checkpoints"
    a1 = load_file(ckpts / "step_000001" / "actors" / "policy" / "adapter" / "adapter_model.safetensors")
    a2 = load_file(ckpts / "step_000002" / "actors" / "policy" / "adapter" / "adapter_model.safetensors")
    assert a1.keys() == a2.keys() and any(not torch.equal(a1[k], a2[k]) for k in a1)


def test_final_is_plain_hf_model_equal_to_base_plus_adapter(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = lora_run
    assert not list((run / "final" / "policy").glob("adapter*"))
    final = AutoModelForCausalLM.from_pretrained(run / "final" / "policy", dtype=torch.float32)
    assert type(final).__name__ == "LlamaForCausalLM"
    assert load_tokenizer(str(run / "final" / "policy")).encode("12 + 30")
    base = AutoModelForCausalLM.from_pretrained(materialize(), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(run / "checkpoints" / "step_000002" / "actors" / "policy" / "adapter")).merge_and_unload()
    expected = dict(merged.named_parameters())
    for name, p in final.named_parameters():
        torch.testing.assert_close(p, expected[name], atol=1e-6, rtol=0, msg=name)


def test_resume_from_step_1(lora_run, tmp_path):
    run, _ = lora_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # the resume writes into the run it continues
    ckpt = copy / "checkpoints" / "step_000001"
    out = rltool("train", *TINY, *STEPS, f"resume={ckpt}")
    assert "resumed from" in out.stdout and "at step 1" in out.stdout
    assert f"lora: {ckpt / 'actors' / 'policy' / 'adapter'}" in out.stdout  # trainer: base + the checkpoint's adapter
    assert by_step(read_jsonl(copy / "data_order.jsonl"), "examples") == \
        by_step(read_jsonl(run / "data_order.jsonl"), "examples")
    assert math.isfinite(by_step(read_jsonl(copy / "metrics.jsonl"), "loss/policy")[2])
    assert (copy / "checkpoints" / "step_000002" / "actors" / "policy" / "adapter" / "adapter_model.safetensors").is_file()
