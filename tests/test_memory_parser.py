"""The memory agents' operation language: strict parsing, canonical rendering, round trips."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.memory.parser import (
    OperationParseError,
    extract_json,
    parse_agent_output,
    parse_core_output,
    parse_entry_output,
    render_core_operation,
    render_entry_operations,
    try_parse,
)
from components.memory.types import (
    CoreAppend,
    CoreReplace,
    CoreRewrite,
    CoreSkip,
    EntryAdd,
    EntryDelete,
    EntryMerge,
    EntryUpdate,
)

# --- valid forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"operation": "APPEND", "content": "Name: Ana."}', CoreAppend("Name: Ana.")),
        ('{"operation": "replace", "old": "Lisbon", "new": "Porto"}', CoreReplace("Lisbon", "Porto")),
        ('{"operation": "Rewrite", "content": " Ana, 34, nurse. "}', CoreRewrite("Ana, 34, nurse.")),
        ('{"operation": "SKIP"}', CoreSkip()),
    ],
)
def test_core_operations_parse(text: str, expected: object) -> None:
    assert parse_core_output(text) == expected


def test_entry_operations_parse() -> None:
    text = json.dumps(
        [
            {"operation": "ADD", "content": "Moved to Porto", "date": "2024-03-01", "turns": ["t1", "t2"]},
            {"operation": "add", "content": "Likes jazz"},
            {"operation": "UPDATE", "id": "sem-1", "content": "Works as a nurse", "turns": ["t3"]},
            {"operation": "Merge", "ids": ["sem-2", "sem-3"], "content": "Has two cats"},
            {"operation": "delete", "id": "sem-4"},
        ]
    )
    assert parse_entry_output(text) == [
        EntryAdd("Moved to Porto", "2024-03-01", ("t1", "t2")),
        EntryAdd("Likes jazz"),
        EntryUpdate("sem-1", "Works as a nurse", ("t3",)),
        EntryMerge(("sem-2", "sem-3"), "Has two cats"),
        EntryDelete("sem-4"),
    ]
    assert parse_entry_output("[]") == []
    assert parse_entry_output('[{"operation": "ADD", "content": "x", "date": "2024-03-01T10:30:00+02:00"}]') == [
        EntryAdd("x", "2024-03-01T10:30:00+02:00")
    ]


@pytest.mark.parametrize(
    "wrapped",
    [
        '  \n{"operation": "SKIP"}\n\n',
        '```json\n{"operation": "SKIP"}\n```',
        '```\n{"operation": "SKIP"}\n```',
        'Here is my decision:\n```json\n{"operation": "SKIP"}\n```\nNothing new about the user.',
        'Thinking: the session is small talk, so {"operation": "SKIP"} is right.',
        'Use {curly} braces? No. [note] {"operation": "SKIP"}',
    ],
)
def test_fences_and_prose_are_tolerated(wrapped: str) -> None:
    assert parse_core_output(wrapped) == CoreSkip()


def test_fenced_entry_list_with_prose() -> None:
    text = 'Operations:\n```json\n[{"operation": "DELETE", "id": "epi-2"}]\n```\nDone.'
    assert parse_entry_output(text) == [EntryDelete("epi-2")]


# --- ambiguity and wrong shapes -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"operation": "SKIP"}\n```\nor maybe\n```json\n{"operation": "APPEND", "content": "x"}\n```',
        '{"operation": "SKIP"} {"operation": "SKIP"}',
        '{"operation": "SKIP"}\n[]',
    ],
)
def test_two_json_values_are_ambiguous(text: str) -> None:
    with pytest.raises(OperationParseError, match="ambiguous output: more than one JSON value"):
        parse_core_output(text)


def test_two_lists_are_ambiguous_for_entry_agents() -> None:
    with pytest.raises(OperationParseError, match=r"more than one JSON value \(at line 1 column 1 and line 2"):
        parse_entry_output('[]\n[{"operation": "DELETE", "id": "sem-1"}]')


def test_list_for_core_and_object_for_entries_are_rejected() -> None:
    with pytest.raises(OperationParseError, match="core agent output must be one JSON object, found a list"):
        parse_core_output('[{"operation": "SKIP"}]')
    with pytest.raises(OperationParseError, match="must be one JSON list of operations, found an object"):
        parse_entry_output('{"operation": "ADD", "content": "x"}')


# --- malformed input: each with its message -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no JSON object or list found"),
        ("I will skip this one.", "no JSON object or list found"),
        ('"SKIP"', "no JSON object or list found"),
        (
            '{"operation": "APPEND", "content": "x"',
            r"malformed JSON at line 1 column 39: Expecting ',' delimiter "
            r"\(the output ends inside the JSON value: truncated\?\)",
        ),
        ('{"operation": "APPEND" "content": "x"}', "malformed JSON at line 1 column 24: Expecting ',' delimiter"),
        ('{"operation": "APPEND", "content": "a", "content": "b"}', "duplicate key 'content'"),
        ('{"content": "x"}', "core operation: missing key 'operation'"),
        ('{"operation": 1}', "'operation' must be a string, found a number"),
        ('{"operation": "INSERT", "content": "x"}', "unknown operation 'INSERT'; expected one of APPEND, REPLACE"),
        ('{"operation": "SKIP", "reason": "x"}', r"core operation \(SKIP\): unknown key\(s\) 'reason'"),
        ('{"operation": "APPEND"}', r"core operation \(APPEND\): missing key\(s\) 'content'"),
        ('{"operation": "APPEND", "content": "  "}', "'content' must not be empty"),
        ('{"operation": "APPEND", "content": 3}', "'content' must be a string, found a number"),
        ('{"operation": "REPLACE", "old": "a", "new": null}', "'new' must be a string, found null"),
        ('{"operation": "SKIP", "Operation": "SKIP"}', r"unknown key\(s\) 'Operation'"),
    ],
)
def test_malformed_core_output(text: str, message: str) -> None:
    with pytest.raises(OperationParseError, match=message):
        parse_core_output(text)


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ('[{"operation": "DELETE"}]', r"operation 1 of 1 \(DELETE\): missing key\(s\) 'id'"),
        (
            '[{"operation": "ADD", "content": "x"}, "DELETE"]',
            "operation 2 of 2: expected a JSON object, found a string",
        ),
        ('[{"operation": "MERGE", "ids": ["a"], "content": "x"}]', "'ids' needs at least 2 ids, found 1"),
        ('[{"operation": "MERGE", "ids": ["a", "a"], "content": "x"}]', "'ids' repeats 'a'"),
        ('[{"operation": "MERGE", "ids": "a,b", "content": "x"}]', "'ids' must be a list of strings, found a string"),
        ('[{"operation": "ADD", "content": "x", "date": "May 3"}]', "'date' must be YYYY-MM-DD or an ISO datetime"),
        ('[{"operation": "ADD", "content": "x", "date": null}]', "'date' must be a string, found null"),
        ('[{"operation": "ADD", "content": "x", "turns": "t1"}]', "'turns' must be a list of strings"),
        ('[{"operation": "ADD", "content": "x", "turns": [1]}]', r"'turns'\[0\] must be a non-empty string"),
        ('[{"operation": "UPDATE", "id": "s-1", "content": "x", "date": "2024-01-01"}]', r"unknown key\(s\) 'date'"),
        ('[{"operation": "UPDATE", "id": 7, "content": "x"}]', "'id' must be a string, found a number"),
        ('[{"operation": "ADD", "content": "x"}, oops]', "malformed JSON at line 1 column 40: Expecting value"),
        ('[{"operation": "SKIP"}]', "unknown operation 'SKIP'; expected one of ADD, UPDATE, MERGE, DELETE"),
    ],
)
def test_malformed_entry_output(ops: str, message: str) -> None:
    with pytest.raises(OperationParseError, match=message):
        parse_entry_output(ops)


def test_pathological_nesting_is_a_parse_error() -> None:
    for text in ("[" * 100_000, "{" * 50_000 + "[" * 50_000, '{"a": ' * 5000):
        with pytest.raises(OperationParseError):
            parse_entry_output(text)


def test_try_parse_and_dispatch() -> None:
    ops, error = try_parse("semantic", '[{"operation": "DELETE", "id": "sem-1"}]')
    assert ops == [EntryDelete("sem-1")] and error is None
    ops, error = try_parse("core", "no json here")
    assert ops is None and error == "no JSON object or list found in the output"
    assert parse_agent_output("core", '{"operation": "SKIP"}') == CoreSkip()
    assert parse_agent_output("procedural", "[]") == []
    with pytest.raises(ValueError, match="unknown memory part 'working'"):
        parse_agent_output("working", "[]")  # type: ignore[arg-type]


# --- rendering ------------------------------------------------------------------------------


def test_canonical_rendering() -> None:
    assert render_core_operation(CoreReplace("Lisbon", "Porto")) == (
        '{"operation": "REPLACE", "old": "Lisbon", "new": "Porto"}'
    )
    assert render_core_operation(CoreSkip()) == '{"operation": "SKIP"}'
    assert render_entry_operations([EntryAdd("Café trip", "2024-05-01", ("t1",)), EntryDelete("epi-2")]) == (
        '[{"operation": "ADD", "content": "Café trip", "date": "2024-05-01", "turns": ["t1"]}, '
        '{"operation": "DELETE", "id": "epi-2"}]'
    )
    assert render_entry_operations([]) == "[]"


@pytest.mark.parametrize(
    "bad",
    [CoreAppend(""), CoreAppend(" padded "), CoreReplace("a", "   ")],
)
def test_rendering_refuses_what_would_not_parse_back(bad: object) -> None:
    with pytest.raises(ValueError, match=r"must not be empty|not canonical"):
        render_core_operation(bad)  # type: ignore[arg-type]


def test_rendering_refuses_invalid_entry_operations() -> None:
    with pytest.raises(ValueError, match="'ids' needs at least 2 ids"):
        render_entry_operations([EntryMerge(("sem-1",), "x")])
    with pytest.raises(TypeError):
        render_entry_operations([CoreSkip()])  # type: ignore[list-item]


# --- properties -----------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=40).map(str.strip).filter(bool)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)
turn_tuples = st.lists(ids, unique=True, max_size=4).map(tuple)
dates = st.one_of(
    st.none(),
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
)
core_ops = st.one_of(
    st.builds(CoreAppend, texts),
    st.builds(CoreReplace, texts, texts),
    st.builds(CoreRewrite, texts),
    st.just(CoreSkip()),
)
entry_ops = st.one_of(
    st.builds(EntryAdd, texts, dates, turn_tuples),
    st.builds(EntryUpdate, ids, texts, turn_tuples),
    st.builds(EntryMerge, st.lists(ids, min_size=2, max_size=4, unique=True).map(tuple), texts, turn_tuples),
    st.builds(EntryDelete, ids),
)
JSONISH = [
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    '"operation"',
    '"ADD"',
    '"append"',
    '"MERGE"',
    '"content"',
    '"id"',
    '"ids"',
    '"turns"',
    '"date"',
    '"x"',
    '""',
    "null",
    "1e999",
    "-0",
    "true",
    '["a", "b"]',
    '"2024-01-01"',
    "```json",
    "```",
    "\\",
    '"',
]
jsonish_text = st.lists(st.sampled_from(JSONISH), max_size=40).map("".join)
prose = st.text(st.characters(blacklist_characters="{["), max_size=60)
fences = st.sampled_from([("", ""), ("```json\n", "\n```"), ("```\n", "\n```"), ("\n", " \n")])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), jsonish_text))
def test_arbitrary_text_raises_only_parse_errors(text: str) -> None:
    for parse in (parse_core_output, parse_entry_output):
        with contextlib.suppress(OperationParseError):
            parse(text)
    ops, error = try_parse("episodic", text)
    assert (ops is None) != (error is None)


@settings(max_examples=200)
@given(core_ops)
def test_core_round_trip(op: object) -> None:
    assert parse_core_output(render_core_operation(op)) == op  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.lists(entry_ops, max_size=5))
def test_entry_round_trip(ops: list) -> None:
    assert parse_entry_output(render_entry_operations(ops)) == ops


@settings(max_examples=200)
@given(prose, fences, st.one_of(core_ops, st.lists(entry_ops, max_size=4)), prose)
def test_round_trip_through_prose_and_fences(before: str, fence: tuple[str, str], ops: object, after: str) -> None:
    rendered = render_entry_operations(ops) if isinstance(ops, list) else render_core_operation(ops)  # type: ignore[arg-type]
    text = f"{before}{fence[0]}{rendered}{fence[1]}{after}"
    parsed = parse_entry_output(text) if isinstance(ops, list) else parse_core_output(text)
    assert parsed == ops


def test_extract_json_resumes_after_malformed_values() -> None:
    # the inner object of a broken list is not mistaken for the answer
    with pytest.raises(OperationParseError, match="malformed JSON"):
        extract_json('[{"operation": "SKIP"}, }')
    assert extract_json('{ "note" ] {"operation": "SKIP"}') == {"operation": "SKIP"}
