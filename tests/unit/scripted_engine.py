"""A scripted generation engine for the env and rollout unit tests: fixed replies, real token ids."""
from rltool.records import Completion


class Scripted:
    """Replies to each prompt in turn from `replies` (cycling), `sampling.n` per prompt; records each call's decoded
    prompts and sampling."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.calls, self.k = tok, replies, [], 0

    def generate(self, prompts, sampling):
        self.calls.append(([self.tok.decode(p) for p in prompts], sampling))
        out = []
        for _ in prompts:
            group = []
            for _ in range(sampling.n):
                text = self.replies[self.k % len(self.replies)]
                self.k += 1
                ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
                group.append(Completion(ids, [-0.5] * len(ids), text, False))
            out.append(group)
        return out
