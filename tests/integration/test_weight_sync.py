"""vLLM generates with the trainer's new weights after every step (the stale-weights bug peers ship).

Real engine, real model, a real optimizer step with a large learning rate; then vLLM's log-probs
for a fixed completion must move and agree with the trainer's own. Run for full fine-tuning and
for LoRA (the engine gets the merged W + BA under the base names). Each engine is closed before
the next starts, as in a multirun.
"""
import pytest
import torch

from rltool.actors.embedded import materialize
from rltool.actors.load import load_policy, load_tokenizer
from rltool.actors.logprobs import completion_logp
from rltool.records import Sample, collate
from rltool.config import ActorConfig, LoraConfig
from rltool.engines import sync_weights
from rltool.engines.engine import Sampling
from rltool.engines.prompts import encode_chat
from rltool.engines.vllm_engine import VLLMEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 8], ids=["full", "lora_r8"])
def setup(request):
    path = str(materialize())
    tokenizer = load_tokenizer(path)
    model = load_policy(ActorConfig(path=path, lora=LoraConfig(r=request.param)), "float32", base_dir=path)
    engine = VLLMEngine(path, dtype="float32", device="cpu", seed=0, max_model_len=512, kv_cache_gib=1, max_num_seqs=16,
                        enforce_eager=True)  # no ~90 s torch.compile per engine start
    prompt = encode_chat(tokenizer, [{"role": "user", "content": "What is 17 + 25?"}], 256)
    yield tokenizer, model, engine, prompt
    engine.close()


def trainer_logp(model, prompt, completion):
    batch = collate([Sample(prompt, completion, [0.0] * len(completion), group=0, reward=0.0)], pad_id=0)
    with torch.no_grad():
        return completion_logp(model, batch.input_ids, batch.attention_mask, batch.prompt_width)[0][0]


def test_sampled_logprobs_match_trainer(setup):
    tokenizer, model, engine, prompt = setup
    (c,), = engine.generate([prompt], Sampling(n=1, temperature=1.0, max_new_tokens=16, seed=0))
    torch.testing.assert_close(torch.tensor(c.logp), trainer_logp(model, prompt, c.token_ids), atol=2e-3, rtol=0)


def test_vllm_follows_trainer_after_step(setup):
    tokenizer, model, engine, prompt = setup
    completion = tokenizer.encode(" The answer is 42.", add_special_tokens=False)
    before = torch.tensor(engine.prompt_logprobs(prompt, completion))

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)  # LoRA: adapter only
    batch = collate([Sample(prompt, completion, [0.0] * len(completion), group=0, reward=1.0)], pad_id=0)
    logp = completion_logp(model, batch.input_ids, batch.attention_mask, batch.prompt_width).logp
    (-logp.sum()).backward()  # push the completion's likelihood up hard
    optimizer.step()

    sync_weights(engine, model)
    after = torch.tensor(engine.prompt_logprobs(prompt, completion))
    expected = trainer_logp(model, prompt, completion)
    assert (after - before).abs().max() > 0.5, "vLLM still generates with the old weights"
    torch.testing.assert_close(after, expected, atol=2e-3, rtol=0)
