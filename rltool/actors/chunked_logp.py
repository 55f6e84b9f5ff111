"""Log-probs straight from the final hidden states and the LM head, a chunk of tokens at a time.

The plain path (`completion_logp(..., impl="plain")`) asks the model for the logits of every
completion token: (B, T, V) in fp32, plus the copies that temperature scaling, the entropy's softmax
and autograd keep for the backward. For V = 152k at 8 x 1024 tokens that is ~5 GB a copy, and it,
not the decoder, decides the micro-batch a GPU can hold. Here the logits of `chunk_size` tokens
exist at a time, in the forward and again (recomputed) in the backward, so the head's memory is
(chunk, V) whatever B x T is. The price is one extra (chunk x H x V) matmul per chunk in the
backward, the recompute. TRL computes log-softmax row by row; verl and Liger fuse linear +
log-prob in chunked kernels; this is that idea in plain PyTorch.

How it gets the hidden states without monkey-patching: while `head_replaced` is active, the LM
head module is still called by the model's own forward (so DeepSpeed ZeRO-3's hooks gather its
weight once for the forward and once for the backward, as for any layer, and reduce-scatter its
gradient), but a forward pre-hook captures its input and hands the head zero rows, and a forward
hook (run before ZeRO-3's release hook) returns this module's (B, T, 3) statistics as the "logits".
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor

from rltool.actors.lora import AdapterDisabled

LOGP, LOGP_T1, ENTROPY = 0, 1, 2  # columns of the (N, 3) statistics
UNSUPPORTED_CONFIG = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Models that transform logits after the head (Gemma-2 soft-capping, Cohere, Granite) use the plain path."""


def lm_head(model) -> torch.nn.Linear | None:
    """The bias-free nn.Linear output head the chunked path can stand in for, or None (-> plain path).

    Looks through DeepSpeed's engine (`.module`), the LoRA reference (`AdapterDisabled.model`) and
    PEFT's wrappers (attribute delegation). A LoRA on lm_head itself (a LoraLayer, not nn.Linear)
    is refused: its weight alone is not the head."""
    inner = getattr(model, "module", model)  # DeepSpeedEngine
    inner = inner.model if isinstance(inner, AdapterDisabled) else inner
    config = getattr(inner, "config", None)
    if config is None or any(getattr(config, k, None) not in (None, 1, 1.0) for k in UNSUPPORTED_CONFIG):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return head if type(head) is torch.nn.Linear and head.bias is None else None


@contextmanager
def head_replaced(head: torch.nn.Linear, fn: Callable[[Tensor, Tensor], Tensor]) -> Iterator[None]:
    """Inside the block, `head(x)` returns `fn(x, head.weight)` and never forms x @ W.T.

    The pre-hook runs after ZeRO-3's (which gathered the weight and wrapped x for its post-backward
    release); the forward hook is prepended so it runs while the weight is still gathered, and
    ZeRO-3's own forward hook then wraps fn's output so the backward gathers the weight again."""
    seen: list[Tensor] = []

    def capture(module, args):
        seen.append(args[0])
        return (args[0][..., :0, :],)  # the head's own matmul runs on zero rows

    def replace(module, args, output):
        return fn(seen.pop(), module.weight)

    hooks = [head.register_forward_pre_hook(capture), head.register_forward_hook(replace, prepend=True)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


class ChunkedHeadLogp(torch.autograd.Function):
    """hidden (N, H), weight (V, H), targets (N,) -> (N, 3): logp at `temperature`, logp at
    temperature 1 (when with_t1, else 0), entropy at `temperature` (when with_entropy, else 0; no
    gradient, like the plain path's). Gradients flow to hidden and weight from the two logp columns.

    The forward keeps (chunk, V) alive; the backward recomputes each chunk's logits and softmax.
    Logits are computed in the weight's dtype and upcast, as the plain path's `.float()` does; the
    weight's gradient is accumulated in fp32 over chunks (one (V, H) fp32 buffer in the backward)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int,
                with_entropy: bool, with_t1: bool) -> Tensor:
        out = torch.zeros(hidden.shape[0], 3, dtype=torch.float32, device=hidden.device)  # (N, 3)
        for s in range(0, hidden.shape[0], chunk_size):
            raw = (hidden[s:s + chunk_size] @ weight.T).float()  # (c, V)
            logits = raw / temperature if temperature != 1.0 else raw
            y = targets[s:s + chunk_size, None]  # (c, 1)
            logz = torch.logsumexp(logits, dim=-1)  # (c,)
            out[s:s + chunk_size, LOGP] = logits.gather(-1, y).squeeze(-1) - logz
            if with_t1:
                out[s:s + chunk_size, LOGP_T1] = raw.gather(-1, y).squeeze(-1) - torch.logsumexp(raw, dim=-1)
            if with_entropy:
                out[s:s + chunk_size, ENTROPY] = logz - (torch.softmax(logits, -1) * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk_size, ctx.with_t1 = temperature, chunk_size, with_t1
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        hidden, weight, targets = ctx.saved_tensors
        T, c = ctx.temperature, ctx.chunk_size
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], c):
            h, y = hidden[s:s + c], targets[s:s + c, None]  # (c, H), (c, 1)
            raw = (h @ weight.T).float()  # (c, V), recomputed
            # d logp / d logits = (onehot(y) - softmax(logits / T)) / T, times the incoming gradient
            g = grad[s:s + c, LOGP, None]  # (c, 1)
            dlogits = torch.softmax(raw / T if T != 1.0 else raw, -1).mul_(-g)  # (c, V)
            dlogits.scatter_add_(-1, y, g)
            if T != 1.0:
                dlogits.div_(T)
            if ctx.with_t1:
                g1 = grad[s:s + c, LOGP_T1, None]  # (c, 1)
                p1 = torch.softmax(raw, -1).mul_(-g1)
                dlogits.add_(p1.scatter_add_(-1, y, g1))
                del p1
            del raw
            dlogits = dlogits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + c] = dlogits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(dlogits.T.float(), h.float())
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None, None, None, None, None)


def chunked_stats(targets: Tensor, temperature: float, chunk_size: int, with_entropy: bool, with_t1: bool):
    """The `fn` for `head_replaced`: head input (B, T+1, H) of the last T+1 positions -> (B, T, 3)."""

    def fn(hidden: Tensor, weight: Tensor) -> Tensor:
        B, T = targets.shape
        # (B*T, H): position t predicts token P+t. The cast is a no-op except where the head was upcast (QLoRA's
        # prepare_model_for_kbit_training keeps it in fp32 while the decoder computes in bf16).
        h = hidden[:, :-1].reshape(B * T, hidden.shape[-1]).to(weight.dtype)
        out = ChunkedHeadLogp.apply(h, weight, targets.reshape(-1), temperature, chunk_size, with_entropy, with_t1)
        return out.view(B, T, 3)

    return fn
