"""The engines' lifecycle over training steps, against a fake engine that enforces vLLM's sleep-mode
contract strictly (there is no GPU here, and vLLM's sleep mode needs CUDA). The phase sequence run is
the loop's own: `update_and_sync`, which rltool/train.py calls after each rollout."""
import pytest
import torch

from rltool.actors.actor import Actor
from rltool.metrics import PhaseTimer
from rltool.engines.engine import Sampling
from rltool.engines.lifecycle import update_and_sync
from rltool.engines.lora_engine import AdapterView
from rltool.records import Completion


class ContractError(AssertionError):
    """A call vLLM would hang on, corrupt memory with, or ignore as a lifecycle mistake."""


class StrictEngine:
    """An Engine whose sleep/wake follow vLLM's sleep mode (`enable_sleep_mode=True`, level 1), strictly.

    The contract, from vLLM's source (vllm/entrypoints/llm.py `LLM.sleep` / `LLM.wake_up`,
    vllm/v1/engine/core.py `EngineCore.sleep` / `wake_up`, vllm/v1/executor/abstract.py `Executor.sleep` /
    `wake_up`, vllm/v1/worker/gpu_worker.py `Worker.sleep`; vLLM 0.32):
      - sleep(level=1) pauses the scheduler, then offloads the weights to CPU and discards the KV cache.
        "The engine should not process any requests" until wake_up: a generate on a sleeping engine is queued
        by the paused scheduler and never runs (the caller waits until a deadline).
      - wake_up() reallocates the memory and resumes the scheduler; then the engine serves again.
      - weights must not be written while asleep: they live in CPU backup buffers until wake_up copies
        them back (a reload into the sleeping model writes into memory that wake_up then overwrites).
      - sleeping a sleeping executor logs "Executor is already sleeping." and does nothing; waking an awake
        one logs "Executor is not sleeping.": vLLM tolerates both, this fake refuses them, since each means
        the caller lost track of an engine's state (e.g. an engine shared by two actors slept twice).
    """

    def __init__(self, name: str):
        self.name, self.asleep, self.closed, self.weights, self.events = name, False, False, 0, []

    def _check(self, what: str) -> None:
        if self.closed:
            raise ContractError(f"{self.name}: {what} after close")

    def generate(self, prompts, sampling: Sampling, lora=None):
        self._check("generate")
        if self.asleep:
            raise ContractError(f"{self.name}: generate while asleep (vLLM would queue it and never run it)")
        self.events.append("generate")
        return [[Completion([1], [-0.1], "x", False)] * sampling.n for _ in prompts]

    def update_weights(self, named_tensors) -> None:
        self._check("update_weights")
        if self.asleep:
            raise ContractError(f"{self.name}: weights written while asleep (offloaded to CPU until wake_up)")
        for _ in named_tensors:
            pass
        self.weights += 1
        self.events.append("sync")

    def sleep(self) -> None:
        self._check("sleep")
        if self.asleep:
            raise ContractError(f"{self.name}: sleep while asleep")
        self.asleep = True
        self.events.append("sleep")

    def wake(self) -> None:
        self._check("wake")
        if not self.asleep:
            raise ContractError(f"{self.name}: wake while awake")
        self.asleep = False
        self.events.append("wake")

    def close(self) -> None:
        self.closed = True


def make_actor(name: str, engine, trainable: bool) -> Actor:
    model = torch.nn.Linear(2, 2) if trainable else None
    return Actor(name, spec=type("Spec", (), {"trainable": trainable})(), cfg=None, tokenizer=None, engine=engine,
                 base_dir="", model=model)


def run_steps(actors: dict, speakers: list[str], steps: int = 3) -> None:
    """The loop's steps: a rollout in which `speakers` generate, then the loop's update_and_sync, where every
    trainable actor that spoke updates (one that did not speak has nothing to train on and is not synced)."""
    for _ in range(steps):
        for name in speakers:
            actors[name].engine.generate([[1, 2]], Sampling())
        update_and_sync(actors, lambda actor: {"rows": 1.0} if actor.name in speakers else None, PhaseTimer())


def test_frozen_silent_and_speaking_actors_are_all_awake_for_every_rollout():
    engines = {n: StrictEngine(n) for n in ("solver", "quiet", "checker")}
    actors = {"solver": make_actor("solver", engines["solver"], True),
              "quiet": make_actor("quiet", engines["quiet"], True),  # trainable, but its turns never came up
              "checker": make_actor("checker", engines["checker"], False)}  # frozen: never synced
    run_steps(actors, speakers=["solver", "checker"])
    assert all(not e.asleep for e in engines.values())  # awake after the step: eval and the next rollout run
    assert engines["solver"].events == ["generate", "sleep", "wake", "sync"] * 3
    assert engines["checker"].events == ["generate", "sleep", "wake"] * 3
    assert engines["quiet"].events == ["sleep", "wake"] * 3 and engines["quiet"].weights == 0
    # the quiet actor speaks from step 4 on: its engine serves it
    actors["quiet"].engine.generate([[1]], Sampling())


def test_an_engine_shared_by_frozen_actors_or_lora_views_sleeps_and_wakes_once_a_step():
    shared = StrictEngine("judges")  # frozen actors on one model share one engine
    lora = StrictEngine("multi-lora")  # rollout.multi_lora: each LoRA actor generates through its own view
    views = [AdapterView(lora, name, iter(range(1, 9))) for name in ("a", "b")]
    actors = {"judge": make_actor("judge", shared, False), "critic": make_actor("critic", shared, False),
              "a": make_actor("a", views[0], True), "b": make_actor("b", views[1], True)}
    run_steps(actors, speakers=["judge", "critic"], steps=2)
    assert shared.events == ["generate", "generate", "sleep", "wake"] * 2
    assert lora.events == ["sleep", "wake"] * 2
    for view in views:
        view.close()
