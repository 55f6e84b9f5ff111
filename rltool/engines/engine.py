"""The generation engine protocol shared by vLLM and HF `generate`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from rltool.records import Completion


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    greedy: bool = False
    seed: int | None = None


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """Token-id prompts -> for each prompt, `sampling.n` completions."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, "torch.Tensor"]]) -> None:  # noqa: F821
        """Copy the trainer's current weights in place (no disk round trip)."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory while the trainer updates (no-op where unsupported)."""
        ...

    def wake(self) -> None:
        ...

    def close(self) -> None:
        """Release everything the engine holds. A multirun runs its jobs one after another in one
        process, so what a job's engine keeps would otherwise still be held when the next job starts."""
        ...
