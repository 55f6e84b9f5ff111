"""Multi-turn, multi-actor conversations in tokens: each actor's own view, with its trained tokens
exactly the ids its engine produced.

A conversation is shared text, but each actor reads it through its own tokenizer and chat template:
its own turns as `assistant`, every other actor's as a `user` message "<Name> says: <text>"
(`speaker_format`). Decoding a turn and encoding it again can give other ids (BPE merges differ at
the boundaries), so an actor's view is built incrementally, in tokens:
  - its own turn: the engine's ids as they came (trained, with the engine's log-probs);
  - everything else (system and task, other actors' turns, the glue the template writes between
    turns, the opening of its next turn): the chat template's text, encoded, never trained.
The glue is the difference between renderings of the message list before and after a message, so
any template whose rendering of a conversation is a prefix of the rendering of its continuation
works (ChatML, Llama 3, Qwen 2.5); one that is not is refused with a clear error.

`run_turns` drives many conversations at once: at each turn, every live conversation whose
schedule names actor X goes to X's engine in one `generate` call (no per-conversation calls).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rltool.engines.engine import Sampling
from rltool.records import Completion


class TemplateError(ValueError):
    """A chat template that cannot be extended turn by turn."""


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def encode_text(tokenizer, text: str) -> list[int]:
    """Template text -> ids; its special tokens (`<|im_start|>`) map to their ids, no BOS is added."""
    return tokenizer.encode(text, add_special_tokens=False) if text else []


@dataclass
class ChatView:
    """One actor's token sequence of one conversation, and which of its tokens the actor generated."""

    actor: str
    tokenizer: Any
    messages: list[dict]
    ids: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    """1 on the actor's own generated tokens (the engine's ids), 0 elsewhere."""
    logp: list[float] = field(default_factory=list)
    """The engine's log-prob of each trained token; 0 elsewhere."""
    rendered: str = ""
    """The template's text of `messages` so far (without a generation prompt)."""
    open_turn: bool = False
    """The generation prompt of the actor's next turn is already in `ids`."""

    @classmethod
    def start(cls, actor: str, tokenizer, messages: list[dict]) -> "ChatView":
        view = cls(actor, tokenizer, list(messages))
        view.rendered = render(tokenizer, view.messages, False)
        view._append(encode_text(tokenizer, view.rendered))
        return view

    def _append(self, ids: list[int], logp: Optional[list[float]] = None) -> None:
        self.ids += ids
        self.trained += [1 if logp is not None else 0] * len(ids)
        self.logp += logp if logp is not None else [0.0] * len(ids)

    def _extend_text(self, message: Optional[dict], generation_prompt: bool) -> str:
        """The template text that `message` (and/or a generation prompt) adds after what is rendered."""
        messages = self.messages + ([message] if message else [])
        full = render(self.tokenizer, messages, generation_prompt)
        if not full.startswith(self.rendered):
            raise TemplateError(f"actor {self.actor}: the chat template re-renders earlier turns differently when a "
                                "turn is added; multi-turn training needs a template whose conversation prefix is stable")
        return full[len(self.rendered):]

    def prompt(self) -> list[int]:
        """The ids the engine continues for this actor's next turn (the turn's opening appended once)."""
        if not self.open_turn:
            self._append(encode_text(self.tokenizer, self._extend_text(None, True)))
            self.open_turn = True
        return self.ids

    def add_own(self, c: Completion) -> None:
        """The actor's turn: the engine's ids and log-probs, then the template's close of an assistant turn
        (less what the engine already produced: a turn that stopped at EOS holds `<|im_end|>` itself)."""
        self.prompt()
        self._append(list(c.token_ids), list(c.logp))
        message = {"role": "assistant", "content": c.text}
        before = self.rendered + self._extend_text(None, True)  # what `ids` holds up to the generation
        full = render(self.tokenizer, self.messages + [message], False)
        # Llama 3.x templates write every message as `content | trim`: a turn that began or ended with
        # whitespace renders without it. The ids stay the engine's; the glue after them is the template's.
        shown = next((t for t in (c.text, c.text.strip()) if full.startswith(before + t)), None)
        if shown is None:
            raise TemplateError(f"actor {self.actor}: the chat template does not render an assistant turn as the "
                                "generation prompt followed by the generated text")
        close = full[len(before) + len(shown):]
        # A turn that stopped on a special token (EOS, <|eot_id|>) holds the start of the close itself.
        stop = c.token_ids[-1] if c.token_ids and not c.truncated else None
        if stop in self.tokenizer.all_special_ids and close.startswith(self.tokenizer.decode([stop])):
            close = close[len(self.tokenizer.decode([stop])):]
        self._append(encode_text(self.tokenizer, close))
        self.messages.append(message)
        self.rendered, self.open_turn = full, False

    def add_other(self, speaker: str, text: str, speaker_format: str = "{name} says: {text}") -> None:
        """Another actor's turn, as a user message (never trained)."""
        if self.open_turn:  # generated nothing after opening a turn: drop the opening again
            opening = len(encode_text(self.tokenizer, self._extend_text(None, True)))
            del self.ids[-opening:], self.trained[-opening:], self.logp[-opening:]
            self.open_turn = False
        message = {"role": "user", "content": speaker_format.format(name=speaker, text=text)}
        self._append(encode_text(self.tokenizer, self._extend_text(message, False)))
        self.messages.append(message)
        self.rendered = render(self.tokenizer, self.messages, False)

    def trajectory(self) -> tuple[list[int], list[int], list[int], list[float]]:
        """(prompt_ids, completion_ids, completion_mask, sample_logp): the prompt is everything before the
        actor's first own token; the completion everything after it, masked to the actor's own tokens."""
        first = self.trained.index(1) if 1 in self.trained else len(self.ids)
        return self.ids[:first], self.ids[first:], self.trained[first:], self.logp[first:]


@dataclass
class Conversation:
    """One conversation: the schedule of speakers, the turns so far (speaker, text), one view per actor."""

    schedule: list[str]
    views: dict[str, ChatView]
    turns: list[tuple[str, Completion]] = field(default_factory=list)
    ended_early: bool = False
    """A view outgrew the prompt budget before the schedule ended."""


@dataclass(frozen=True)
class Speaker:
    """What `run_turns` needs of an actor: its engine, tokenizer and sampling settings."""

    engine: Any
    tokenizer: Any
    sampling: Sampling


def start_conversations(actors: dict[str, Speaker], starts: list[dict[str, list[dict]]],
                        schedules: list[list[str]]) -> list[Conversation]:
    """starts[i][name]: the opening messages actor `name` sees in conversation i (its system prompt
    and the task); schedules[i]: who speaks at each turn."""
    return [Conversation(schedule, {name: ChatView.start(name, actors[name].tokenizer, start[name]) for name in actors})
            for start, schedule in zip(starts, schedules)]


def run_turns(conversations: list[Conversation], actors: dict[str, Speaker], max_prompt_len: int,
              speaker_format: str = "{name} says: {text}") -> None:
    """Play every conversation's schedule to its end, batching each turn per actor."""
    for t in range(max((len(c.schedule) for c in conversations), default=0)):
        for name, speaker in actors.items():
            due = [c for c in conversations if not c.ended_early and t < len(c.schedule) and c.schedule[t] == name]
            prompts = []
            for c in list(due):
                ids = c.views[name].prompt()
                if len(ids) > max_prompt_len:  # never cut a conversation's context: it ends here
                    c.ended_early = True
                    due.remove(c)
                else:
                    prompts.append(list(ids))
            if not due:
                continue
            outputs = speaker.engine.generate(prompts, speaker.sampling)  # one call for all of this actor's turns
            for c, (completion,) in zip(due, outputs):
                c.turns.append((name, completion))
                for other, view in c.views.items():
                    if other == name:
                        view.add_own(completion)
                    else:
                        view.add_other(name, completion.text, speaker_format)
