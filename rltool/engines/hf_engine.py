"""Transformers `generate` as an engine: slow, but with no vLLM in the way when debugging.

It generates with the trainer's own model object, so there are no weights to sync.
"""
from __future__ import annotations

from typing import Iterable

import torch

from rltool.engines.engine import Sampling
from rltool.records import Completion


class HFEngine:
    def __init__(self, model, tokenizer, ignore_eos: bool = False):
        self.model, self.tokenizer, self.ignore_eos = model, tokenizer, ignore_eos

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        P = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])  # (N, P) left-padded
        attention_mask = (torch.arange(P)[None] >= torch.tensor([P - len(p) for p in prompts])[:, None]).long()
        input_ids, attention_mask = input_ids.to(self.model.device), attention_mask.to(self.model.device)
        was_training = self.model.training
        self.model.eval()
        kwargs = dict(do_sample=False) if sampling.greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        if self.ignore_eos:  # EOS is suppressed until the last token: every completion is max_new_tokens long
            kwargs["min_new_tokens"] = sampling.max_new_tokens
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                  max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
                                  return_dict_in_generate=True, output_logits=True, pad_token_id=pad,
                                  eos_token_id=eos, **kwargs)
        self.model.train(was_training)
        temperature = 1.0 if sampling.greedy else sampling.temperature
        logits = torch.stack(out.logits, dim=1).float() / temperature  # (N*n, T, V)
        new = out.sequences[:, P:]  # (N*n, T)
        logp = torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1)  # (N*n, T)
        results: list[list[Completion]] = [[] for _ in prompts]
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            length = ids.index(eos) + 1 if eos in ids else len(ids)
            results[row // sampling.n].append(Completion(
                token_ids=ids[:length], logp=logp[row, :length].tolist(),
                text=self.tokenizer.decode(ids[:length], skip_special_tokens=True),
                truncated=eos not in ids))
        return results

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass  # generates with the trainer's model itself

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        self.model = self.tokenizer = None  # the trainer's objects: freed when train() lets go of them too
