"""The round-spec DSL: exact trees for every construct, every error message with its position,
seeded sampling (determinism, per-group vs per-row, every choice reachable)."""
import random
from collections import Counter

import pytest

from rltool.config import ConfigError
from rltool.envs.round_spec import (Alt, Name, Repeat, RoundSpecError, Seq, Wildcard, max_turns, min_turns, parse,
                                    sample, schedules)

AB = ["A", "B"]
A, B, C = Name("A"), Name("B"), Name("C")


@pytest.mark.parametrize("text, root", [
    ("A", A),
    ("A -> B", Seq((A, B))),
    ("A -> B -> A", Seq((A, B, A))),
    ("*", Wildcard()),
    ("A*3", Repeat(A, 3, 3)),
    ("A*(2..4)", Repeat(A, 2, 4)),
    ("A*(3..3)", Repeat(A, 3, 3)),
    ("A*1", A),                                   # a count of 1 is the item itself
    ("(A|B)", Alt((A, B))),
    ("(A/B)", Alt((A, B))),                       # Actors' spelling
    ("(A|B/C)", Alt((A, B, C))),
    ("(A)", A),
    ("(A -> B)", Seq((A, B))),
    ("A -> (B -> C)", Seq((A, B, C))),            # a parenthesised sub-sequence flattens
    ("(A -> B | C)", Alt((Seq((A, B)), C))),      # -> binds tighter than |
    ("**3", Repeat(Wildcard(), 3, 3)),            # wildcard, then its repetition
    ("* -> A", Seq((Wildcard(), A))),
    ("(A|*)*2", Repeat(Alt((A, Wildcard())), 2, 2)),
    ("B -> A -> (B/A)*5", Seq((B, A, Repeat(Alt((B, A)), 5, 5)))),
    ("A -> (B -> (A|B))*2", Seq((A, Repeat(Seq((B, Alt((A, B)))), 2, 2)))),
    ("((A*2))*3", Repeat(Repeat(A, 2, 2), 3, 3)),
    ("((A|B)|C)", Alt((Alt((A, B)), C))),         # nested alternatives keep their own odds
])
def test_parse_trees(text, root):
    assert parse(text, ["A", "B", "C"]).root == root


@pytest.mark.parametrize("text", ["A->B->(A|B)*5", "  A ->B->  ( A | B ) * 5 ", "A\t->\nB -> (A/B)*5"])
def test_whitespace_between_tokens_is_ignored(text):
    assert parse(text, AB).root == Seq((A, B, Repeat(Alt((A, B)), 5, 5)))


@pytest.mark.parametrize("text, canonical", [
    ("B->A->(B/A)*5", "B -> A -> (B | A)*5"),
    ("A*(2..4)->*", "A*(2..4) -> *"),
    ("A->(B->(A|B))*(1..2)", "A -> (B -> (A | B))*(1..2)"),
    ("((A*2))*3", "(A*2)*3"),
    ("(A->B|C)", "(A -> B | C)"),
])
def test_canonical_form_parses_back_to_the_same_tree(text, canonical):
    spec = parse(text, ["A", "B", "C"])
    assert str(spec) == canonical
    assert parse(canonical, ["A", "B", "C"]).root == spec.root


@pytest.mark.parametrize("text, message", [
    ("A -> C", "round_spec 'A -> C': unknown actor 'C' at position 5; actors: A, B"),
    ("A ->", "round_spec 'A ->': expected an actor, '*' or '(' at position 4, found the end of the spec"),
    ("A -> -> B", "round_spec 'A -> -> B': expected an actor, '*' or '(' at position 5, found '->'"),
    ("()", "round_spec '()': expected an actor, '*' or '(' at position 1, found ')'"),
    ("(A|)", "round_spec '(A|)': expected an actor, '*' or '(' at position 3, found ')'"),
    ("A*(4..2)", "round_spec 'A*(4..2)': repetition range 4..2 at position 3: the lower bound must be <= the upper"),
    ("(A|B", "round_spec '(A|B': unbalanced parentheses: '(' at position 0 is never closed"),
    ("A -> ((B)", "round_spec 'A -> ((B)': unbalanced parentheses: '(' at position 5 is never closed"),
    ("A)", "round_spec 'A)': unbalanced parentheses: ')' at position 1 has no matching '('"),
    (")", "round_spec ')': unbalanced parentheses: ')' at position 0 has no matching '('"),
    ("", "round_spec '': empty; expected turns such as 'A -> B -> (A|B)*3'"),
    ("   ", "round_spec '   ': empty; expected turns such as 'A -> B -> (A|B)*3'"),
    ("A*0", "round_spec 'A*0': zero repetitions at position 2: a count must be >= 1"),
    ("A*(0..2)", "round_spec 'A*(0..2)': zero repetitions at position 3: a count must be >= 1"),
    ("A B", "round_spec 'A B': expected '->' or the end of the spec at position 2, found 'B'"),
    ("(A B)", "round_spec '(A B)': expected '->', '|' or ')' at position 3, found 'B'"),
    ("A*2*3", "round_spec 'A*2*3': a second repetition at position 3; write (X*m)*n"),
    ("A -> B!", "round_spec 'A -> B!': unexpected character '!' at position 6"),
    ("A - > B", "round_spec 'A - > B': unexpected character '-' at position 2"),
    ("A*", "round_spec 'A*': expected a repetition count n or (m..n) after '*' at position 2, found the end of the spec"),
    ("A*B", "round_spec 'A*B': expected a repetition count n or (m..n) after '*' at position 2, found 'B'"),
    ("A*(2..)", "round_spec 'A*(2..)': expected a repetition count at position 6, found ')'"),
    ("A*(2 4)", "round_spec 'A*(2 4)': expected '..' at position 5, found '4'"),
    ("A*(2..4", "round_spec 'A*(2..4': expected ')' at position 7, found the end of the spec"),
    ("*(2..4)", "round_spec '*(2..4)': expected '->' or the end of the spec at position 1, found '('"),
])
def test_every_error_names_spec_position_and_what_was_expected(text, message):
    with pytest.raises(RoundSpecError) as err:
        parse(text, AB)
    assert str(err.value) == message
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line


def test_no_actors_is_an_error():
    with pytest.raises(RoundSpecError, match="round_spec 'A': no actors to take turns"):
        parse("A", [])


def test_turn_bounds():
    assert (min_turns(parse("B -> A -> (B/A)*5", AB)), max_turns(parse("B -> A -> (B/A)*5", AB))) == (7, 7)
    assert (min_turns(parse("A*(2..4) -> B", AB)), max_turns(parse("A*(2..4) -> B", AB))) == (3, 5)
    # (A -> B | A*3): 2 or 3 turns; repeated 1..2 times: 2..6
    spec = parse("(A -> B | A*3)*(1..2)", AB)
    assert (min_turns(spec), max_turns(spec)) == (2, 6)


def test_fixed_spec_samples_itself():
    assert sample(parse("A -> B*2 -> A", AB), random.Random(0)) == ["A", "B", "B", "A"]


def test_sampling_uses_only_the_given_generator():
    spec = parse("(A|B)*4 -> *", AB)
    random.seed(1)
    first = sample(spec, random.Random(7))
    random.seed(2)  # the global generator must not matter
    assert sample(spec, random.Random(7)) == first


def test_alternatives_ranges_and_wildcard_cover_every_choice():
    rng = random.Random(0)
    alt = Counter(tuple(sample(parse("(A|B|C)", ["A", "B", "C"]), rng)) for _ in range(600))
    assert set(alt) == {("A",), ("B",), ("C",)} and min(alt.values()) > 150   # ~200 each
    lengths = Counter(len(sample(parse("A*(2..4)", AB), rng)) for _ in range(600))
    assert set(lengths) == {2, 3, 4} and min(lengths.values()) > 150
    wild = Counter(sample(parse("*", ["A", "B", "C"]), rng)[0] for _ in range(600))
    assert set(wild) == {"A", "B", "C"} and min(wild.values()) > 150
    # every repetition draws afresh: (A|B)*2 yields all four orders
    pairs = Counter(tuple(sample(parse("(A|B)*2", AB), rng)) for _ in range(400))
    assert set(pairs) == {("A", "A"), ("A", "B"), ("B", "A"), ("B", "B")}


def test_schedules_are_reproducible():
    spec = parse("A -> (A|B)*(1..3)", AB)
    assert schedules(spec, 3, groups=4, group_size=2) == schedules(spec, 3, groups=4, group_size=2)
    assert schedules(spec, 3, groups=4, group_size=2, per="row") == schedules(spec, 3, groups=4, group_size=2, per="row")
    assert schedules(spec, 3, groups=8, group_size=1) != schedules(spec, 4, groups=8, group_size=1)


def test_per_group_shares_a_schedule_per_row_does_not():
    spec = parse("(A|B)*6", AB)
    rows = schedules(spec, 0, groups=3, group_size=4)
    assert len(rows) == 12
    groups = [rows[g * 4:(g + 1) * 4] for g in range(3)]
    assert all(all(r == g[0] for r in g) for g in groups)
    assert len({tuple(g[0]) for g in groups}) > 1  # different groups, (almost surely) different schedules
    rows[0].append("A")  # a group's rows are separate lists: the caller may extend one
    assert len(rows[1]) == 6
    rows = schedules(spec, 0, groups=3, group_size=4, per="row")
    assert len({tuple(r) for r in rows}) > 6  # 64 possible schedules, 12 draws


def test_bad_schedule_per_is_a_config_error():
    with pytest.raises(ConfigError, match="schedule_per='prompt': must be one of group, row"):
        schedules(parse("A", AB), 0, groups=1, group_size=2, per="prompt")
