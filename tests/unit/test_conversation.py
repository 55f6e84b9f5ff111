"""Multi-turn views, token by token, on SmolLM2's ChatML template and a Llama-3-style template.

A scripted engine answers each prompt with fixed text; its token ids are chosen by the test, so the
test knows exactly which ids the trained positions must hold.
"""
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rltool.engines.conversation import ChatView, Speaker, TemplateError, run_turns, start_conversations
from rltool.engines.engine import Sampling
from rltool.records import Completion

TOKENIZER = Path.home() / ".cache" / "rltool" / "models" / "smollm2-135m-instruct"
LLAMA3 = (  # the shape of Llama 3's template: header tokens, <|eot_id|> closing every turn
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA3_TRIM = (  # as Llama 3.x's real template writes a turn: the message text goes through `| trim`
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def smollm():
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip("embedded model not materialized (python -m rltool.actors.embedded)")
    return AutoTokenizer.from_pretrained(TOKENIZER)


def llama_tokenizer(template):
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip("embedded model not materialized (python -m rltool.actors.embedded)")
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template, tok.eos_token = template, "<|eot_id|>"
    return tok


@pytest.fixture(scope="module")
def llama3_style():
    return llama_tokenizer(LLAMA3)


@pytest.fixture(scope="module")
def llama3_trim():
    return llama_tokenizer(LLAMA3_TRIM)


class ScriptedEngine:
    """Answers turn k of every conversation with `replies[k]`; ids = encode(text) + EOS, or `split` ids."""

    def __init__(self, tok, replies, split=False):
        self.tok, self.replies, self.split, self.calls, self.turn = tok, replies, split, [], 0

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        text = self.replies[self.turn % len(self.replies)]
        self.turn += 1
        ids = self.tok.encode(text, add_special_tokens=False)
        if self.split:  # one token per character: what a sampler may produce, never what encode() gives
            ids = [i for ch in text for i in self.tok.encode(ch, add_special_tokens=False)]
        ids = ids + [self.tok.eos_token_id]
        return [[Completion(token_ids=ids, logp=[-0.25] * len(ids), text=text, truncated=False)] for _ in prompts]


def play(tok, schedule, replies, split=False, conversations=2):
    """replies: {actor: its replies in turn order}."""
    engines = {name: ScriptedEngine(tok, replies[name], split) for name in ("Solver", "Checker")}
    actors = {name: Speaker(engine, tok, Sampling()) for name, engine in engines.items()}
    starts = [{"Solver": [{"role": "system", "content": "You solve."}, {"role": "user", "content": f"What is {i} + 3?"}],
               "Checker": [{"role": "system", "content": "You check."}, {"role": "user", "content": f"Check {i} + 3."}]}
              for i in range(conversations)]
    convs = start_conversations(actors, starts, [schedule] * conversations)
    run_turns(convs, actors, max_prompt_len=4096)
    return convs, engines


@pytest.mark.parametrize("template", ["smollm", "llama3_style"])
def test_each_view_is_the_template_rendering_token_by_token(template, request):
    tok = request.getfixturevalue(template)
    convs, _ = play(tok, ["Solver", "Checker", "Solver"], {"Solver": ["It is 4.", "Final: 4"], "Checker": ["Looks right"]})
    for view in convs[0].views.values():
        rendering = tok.apply_chat_template(view.messages, tokenize=False)
        assert tok.decode(view.ids) == rendering  # the view reads as the template's rendering of the conversation
        if template == "smollm":  # ChatML's glue never merges with content: also equal to encoding it in one go
            assert view.ids == tok.encode(rendering, add_special_tokens=False)
        # token by token: every trained position is inside one of the actor's own assistant turns
        turns = [t for name, c in convs[0].turns if name == view.actor for t in c.token_ids]
        assert [i for i, m in zip(view.ids, view.trained) if m] == turns
        roles = [m["role"] for m in view.messages]
        assert roles == ["system", "user", "assistant", "user", "assistant"] if view.actor == "Solver" else \
            roles == ["system", "user", "user", "assistant", "user"]
    solver = convs[0].views["Solver"]
    assert solver.messages[3]["content"] == "Checker says: Looks right"
    # the mask: the two Solver turns, EOS included, and nothing of the Checker's turn between them
    prompt, completion, mask, _ = solver.trajectory()
    first, second = (c.token_ids for name, c in convs[0].turns if name == "Solver")
    end = len(mask) - mask[::-1].index(1)  # after the last trained token only the template's close follows
    assert completion[:len(first)] == first and completion[end - len(second):end] == second
    assert mask[:end] == [1] * len(first) + [0] * (end - len(first) - len(second)) + [1] * len(second)
    assert not any(mask[end:]) and tok.decode(completion[end:]).strip() in ("", "<|eot_id|>")
    assert "Looks right" in tok.decode([t for t, m in zip(completion, mask) if not m])


def test_trained_tokens_are_the_engine_ids_not_a_re_encoding(smollm):
    # The engine spells "It is 4." one character a token; encode("It is 4.") merges them. The view keeps
    # the engine's ids where it trains, and its text is still the template's rendering.
    convs, _ = play(smollm, ["Solver", "Checker"], {"Solver": ["It is 4."], "Checker": ["ok"]}, split=True)
    solver = convs[0].views["Solver"]
    own = [i for i, m in zip(solver.ids, solver.trained) if m]
    engine_ids = convs[0].turns[0][1].token_ids
    assert own == engine_ids and own[:-1] != smollm.encode("It is 4.", add_special_tokens=False)
    assert smollm.decode(solver.ids) == smollm.apply_chat_template(solver.messages, tokenize=False)
    prompt, completion, mask, logp = solver.trajectory()
    assert completion[:len(engine_ids)] == engine_ids and mask[:len(engine_ids)] == [1] * len(engine_ids)
    assert sum(mask) == len(engine_ids) and logp[:len(engine_ids)] == [-0.25] * len(engine_ids)
    assert all(lp == 0.0 for lp, m in zip(logp, mask) if not m)
    assert prompt == solver.ids[:len(prompt)] and len(prompt) + len(completion) == len(solver.ids)


def test_one_generate_call_per_actor_per_turn(smollm):
    convs, engines = play(smollm, ["Solver", "Checker", "Solver", "Checker"], {"Solver": ["a"], "Checker": ["b"]},
                          conversations=5)
    assert engines["Solver"].calls == [5, 5] and engines["Checker"].calls == [5, 5]
    assert all(len(c.turns) == 4 for c in convs)


def test_a_conversation_that_outgrows_the_budget_ends_without_cutting(smollm):
    tok = smollm
    actors = {n: Speaker(ScriptedEngine(tok, ["word " * 30]), tok, Sampling()) for n in ("Solver", "Checker")}
    starts = [{n: [{"role": "user", "content": "Go."}] for n in actors}]
    convs = start_conversations(actors, starts, [["Solver", "Checker", "Solver", "Checker"]])
    first_prompt = len(convs[0].views["Solver"].prompt())
    run_turns(convs, actors, max_prompt_len=first_prompt + 40)
    assert convs[0].ended_early and len(convs[0].turns) == 2


def test_a_template_that_rewrites_history_is_refused(smollm):
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.chat_template = "{{ messages | length }}:{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    view = ChatView.start("Solver", tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(TemplateError, match="actor Solver: the chat template re-renders earlier turns"):
        view.add_other("Checker", "hello")


def test_a_template_that_trims_message_text_keeps_the_engine_ids_of_a_turn_with_outer_whitespace(llama3_trim):
    # Llama 3.x templates `| trim` every message: a turn the engine ended with whitespace (or began with it)
    # renders shorter than its text. The view trains the engine's ids as they came; the text is the template's.
    tok = llama3_trim
    replies = {"Solver": [" It is 4.  \n", "Final: 4 "], "Checker": ["Looks right\n\n"]}
    convs, _ = play(tok, ["Solver", "Checker", "Solver"], replies)
    solver, checker = convs[0].views["Solver"], convs[0].views["Checker"]
    own = [c.token_ids for name, c in convs[0].turns if name == "Solver"]
    assert [i for i, m in zip(solver.ids, solver.trained) if m] == own[0] + own[1]
    # the glue after each turn is the template's: the close of the turn (its <|eot_id|> is the engine's stop)
    # and the next header; the other actor's turn reads trimmed, as the template renders it
    text = tok.decode(solver.ids)
    assert text.count("<|eot_id|>") == 5 and "Checker says: Looks right<|eot_id|>" in text
    rendering = tok.apply_chat_template(checker.messages, tokenize=False)  # its own turn trimmed, its ids not
    assert tok.decode(checker.ids) == rendering.replace("Looks right<|eot_id|>", "Looks right\n\n<|eot_id|>")
