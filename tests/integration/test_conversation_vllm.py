"""Multi-turn conversations on the real vLLM engine and the embedded model: a trained token is exactly
the id vLLM sampled, with vLLM's log-prob, and the trainer scores each actor's view as vLLM did.

Two actor names share one engine here (the same model plays both roles); the views differ (each
actor's own turns are `assistant`, the other's are `user`).
"""
import pytest
import torch

from rltool.actors.embedded import materialize
from rltool.actors.load import load_policy, load_tokenizer
from rltool.actors.logprobs import completion_logp
from rltool.records import Sample, collate
from rltool.config import ActorConfig
from rltool.engines.conversation import Speaker, run_turns, start_conversations
from rltool.engines.engine import Sampling
from rltool.engines.vllm_engine import VLLMEngine

pytestmark = pytest.mark.slow


class CountingEngine:
    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        return self.engine.generate(prompts, sampling)


@pytest.fixture(scope="module")
def played():
    path = str(materialize())
    tokenizer = load_tokenizer(path)
    engine = VLLMEngine(path, dtype="float32", device="cpu", seed=0, max_model_len=1024, kv_cache_gib=1, max_num_seqs=16,
                        enforce_eager=True)  # no ~90 s torch.compile per engine start
    try:
        counting = CountingEngine(engine)
        sampling = Sampling(n=1, temperature=1.0, max_new_tokens=12, seed=0)
        actors = {"Solver": Speaker(counting, tokenizer, sampling), "Checker": Speaker(counting, tokenizer, sampling)}
        starts = [{"Solver": [{"role": "system", "content": "Solve the problem."},
                              {"role": "user", "content": f"What is {a} + {b}?"}],
                   "Checker": [{"role": "system", "content": "Check the Solver's answer."},
                               {"role": "user", "content": f"The problem: {a} + {b}."}]}
                  for a, b in ((12, 30), (7, 8), (40, 2))]
        convs = start_conversations(actors, starts, [["Solver", "Checker", "Solver"]] * 3)
        run_turns(convs, actors, max_prompt_len=900)
        yield tokenizer, convs, counting.calls
    finally:
        engine.close()


def test_turns_are_batched_per_actor(played):
    _, convs, calls = played
    assert calls == [3, 3, 3]  # turn 1: Solver x 3 conversations, turn 2: Checker x 3, turn 3: Solver x 3
    assert all(len(c.turns) == 3 for c in convs)


def test_trained_tokens_are_vllm_ids_and_logprobs_and_the_trainer_agrees(played):
    tokenizer, convs, _ = played
    path = str(materialize())
    model = load_policy(ActorConfig(path=path), "float32", base_dir=path)
    for c in convs:
        view = c.views["Solver"]
        prompt, completion, mask, logp = view.trajectory()
        engine_turns = [turn for name, turn in c.turns if name == "Solver"]
        assert [t for t, m in zip(completion, mask) if m] == [t for turn in engine_turns for t in turn.token_ids]
        assert [lp for lp, m in zip(logp, mask) if m] == [lp for turn in engine_turns for lp in turn.logp]
        assert tokenizer.decode(view.ids) == tokenizer.apply_chat_template(view.messages, tokenize=False)
        # the trainer, reading the whole multi-turn row, gives vLLM's log-probs on the trained tokens
        sample = Sample(prompt_ids=prompt, completion_ids=completion, sample_logp=logp, group=0, reward=0.0,
                        completion_mask=mask)
        batch = collate([sample], pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            trainer = completion_logp(model, batch.input_ids, batch.attention_mask, batch.prompt_width).logp
        trained = batch.mask.bool()
        torch.testing.assert_close(trainer[trained], batch.sample_logp[trained], atol=2e-3, rtol=0)
