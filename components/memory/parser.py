"""The memory agents' operation language: a strict parser and the canonical renderers.

The core agent emits ONE JSON object::

    {"operation": "APPEND", "content": "..."}          {"operation": "REPLACE", "old": "...", "new": "..."}
    {"operation": "REWRITE", "content": "..."}         {"operation": "SKIP"}

The episodic, semantic and procedural agents emit a JSON list (``[]`` = no change) of::

    {"operation": "ADD", "content": "...", "date": "YYYY-MM-DD", "turns": ["t1", ...]}   (date, turns optional)
    {"operation": "UPDATE", "id": "epi-3", "content": "...", "turns": [...]}             (turns optional)
    {"operation": "MERGE", "ids": ["sem-1", "sem-4"], "content": "...", "turns": [...]}  (>= 2 distinct ids)
    {"operation": "DELETE", "id": "pro-2"}

Operation names are case-insensitive; keys are not. Unknown keys, wrong types and empty text are
errors. The JSON value may be wrapped in a code fence or surrounded by prose, but there must be exactly
one: two values (two fenced blocks, an object followed by another) are ambiguous and rejected. Text
fields are stripped. Every failure is an ``OperationParseError`` saying what was wrong and where.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from components.memory.types import (
    ENTRY_PARTS,
    CoreAppend,
    CoreOperation,
    CoreReplace,
    CoreRewrite,
    CoreSkip,
    EntryAdd,
    EntryDelete,
    EntryMerge,
    EntryOperation,
    EntryUpdate,
    MemoryPart,
)


class OperationParseError(ValueError):
    """Model output that is not a valid operation (or list of operations); the message says where."""


_CORE_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # operation -> (required keys, optional keys); "operation" itself is implied
    "APPEND": (frozenset({"content"}), frozenset()),
    "REPLACE": (frozenset({"old", "new"}), frozenset()),
    "REWRITE": (frozenset({"content"}), frozenset()),
    "SKIP": (frozenset(), frozenset()),
}
_ENTRY_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "ADD": (frozenset({"content"}), frozenset({"date", "turns"})),
    "UPDATE": (frozenset({"id", "content"}), frozenset({"turns"})),
    "MERGE": (frozenset({"ids", "content"}), frozenset({"turns"})),
    "DELETE": (frozenset({"id"}), frozenset()),
}


# ---------------------------------------------------------------------------------------------
# finding the one JSON value


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line} column {column}"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def extract_json(text: str) -> Any:
    """The single JSON object or list in ``text`` (prose and code fences around it are ignored).

    Scans each ``{`` / ``[`` with ``JSONDecoder.raw_decode``; after a failed attempt the scan resumes
    where the decoder gave up, so text inside a malformed value is never mistaken for a value of its own.
    """
    if not isinstance(text, str):
        raise OperationParseError(f"expected model output as text, found {type(text).__name__}")
    found: list[tuple[int, Any]] = []
    failure: tuple[int, int, str] | None = None  # (progress, position, message) of the most JSON-like failure
    pos = 0
    next_open = {"{": -1, "[": -1}  # cached next position of each opener (-2 = none left)
    while len(found) < 2:
        for opener, at in next_open.items():
            if -1 < at < pos or at == -1:
                found_at = text.find(opener, pos)
                next_open[opener] = found_at if found_at >= 0 else -2
        starts = [at for at in next_open.values() if at >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            if failure is None or exc.pos - start > failure[0]:
                failure = (exc.pos - start, exc.pos, exc.msg)
            pos = max(exc.pos, start + 1)
            continue
        except _DuplicateKeyError as exc:
            raise OperationParseError(f"duplicate key '{exc.key}' in the JSON at {_where(text, start)}") from None
        except RecursionError:
            raise OperationParseError(f"JSON nested too deeply at {_where(text, start)}") from None
        except ValueError as exc:  # e.g. an integer literal over Python's digit limit
            raise OperationParseError(f"invalid JSON at {_where(text, start)}: {exc}") from None
        found.append((start, value))
        pos = end
    if len(found) > 1:
        where = " and ".join(_where(text, start) for start, _ in found)
        raise OperationParseError(f"ambiguous output: more than one JSON value (at {where}); expected exactly one")
    if found:
        return found[0][1]
    if failure is not None:
        hint = " (the output ends inside the JSON value: truncated?)" if failure[1] >= len(text.rstrip()) else ""
        raise OperationParseError(f"malformed JSON at {_where(text, failure[1])}: {failure[2]}{hint}")
    raise OperationParseError("no JSON object or list found in the output")


# ---------------------------------------------------------------------------------------------
# field validators (shared by parsing and rendering)


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise OperationParseError(f"{where}: '{key}' must be a string, found {_kind(value)}")
    if not value.strip():
        raise OperationParseError(f"{where}: '{key}' must not be empty")
    return value.strip()


def _id_list(value: Any, key: str, where: str, *, min_items: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise OperationParseError(f"{where}: '{key}' must be a list of strings, found {_kind(value)}")
    items: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise OperationParseError(f"{where}: '{key}'[{index}] must be a non-empty string, found {item!r}")
        if item.strip() in items:
            raise OperationParseError(f"{where}: '{key}' repeats {item.strip()!r}")
        items.append(item.strip())
    if len(items) < min_items:
        raise OperationParseError(f"{where}: '{key}' needs at least {min_items} ids, found {len(items)}")
    return tuple(items)


def _date(obj: dict[str, Any], where: str) -> str | None:
    if "date" not in obj:
        return None
    value = _text(obj, "date", where)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise OperationParseError(f"{where}: 'date' must be YYYY-MM-DD or an ISO datetime, found {value!r}") from None
    return value


def _operation_name(obj: Any, where: str, table: dict[str, Any]) -> str:
    if not isinstance(obj, dict):
        raise OperationParseError(f"{where}: expected a JSON object, found {_kind(obj)}")
    if "operation" not in obj:
        raise OperationParseError(f"{where}: missing key 'operation'")
    raw = obj["operation"]
    if not isinstance(raw, str):
        raise OperationParseError(f"{where}: 'operation' must be a string, found {_kind(raw)}")
    name = raw.strip().upper()
    if name not in table:
        raise OperationParseError(f"{where}: unknown operation {raw!r}; expected one of {', '.join(table)}")
    required, optional = table[name]
    unknown = sorted(set(obj) - required - optional - {"operation"})
    if unknown:
        allowed = ", ".join(sorted(required | optional | {"operation"}))
        raise OperationParseError(
            f"{where} ({name}): unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {allowed}"
        )
    missing = sorted(required - set(obj))
    if missing:
        raise OperationParseError(f"{where} ({name}): missing key(s) {', '.join(map(repr, missing))}")
    return name


def core_operation_from_obj(obj: Any, where: str = "core operation") -> CoreOperation:
    """Validate one decoded core operation."""
    name = _operation_name(obj, where, _CORE_KEYS)
    at = f"{where} ({name})"
    if name == "APPEND":
        return CoreAppend(_text(obj, "content", at))
    if name == "REPLACE":
        return CoreReplace(_text(obj, "old", at), _text(obj, "new", at))
    if name == "REWRITE":
        return CoreRewrite(_text(obj, "content", at))
    return CoreSkip()


def entry_operation_from_obj(obj: Any, where: str = "operation") -> EntryOperation:
    """Validate one decoded episodic/semantic/procedural operation."""
    name = _operation_name(obj, where, _ENTRY_KEYS)
    at = f"{where} ({name})"
    turns = _id_list(obj["turns"], "turns", at, min_items=0) if "turns" in obj else ()
    if name == "ADD":
        return EntryAdd(_text(obj, "content", at), _date(obj, at), turns)
    if name == "UPDATE":
        return EntryUpdate(_text(obj, "id", at), _text(obj, "content", at), turns)
    if name == "MERGE":
        return EntryMerge(_id_list(obj["ids"], "ids", at, min_items=2), _text(obj, "content", at), turns)
    return EntryDelete(_text(obj, "id", at))


# ---------------------------------------------------------------------------------------------
# public parsing


def parse_core_output(text: str) -> CoreOperation:
    """The core agent's output: exactly one JSON object holding one operation."""
    value = extract_json(text)
    if not isinstance(value, dict):
        raise OperationParseError(f"core agent output must be one JSON object, found {_kind(value)}")
    return core_operation_from_obj(value)


def parse_entry_output(text: str) -> list[EntryOperation]:
    """An entry agent's output: exactly one JSON list of operations (``[]`` = no change)."""
    value = extract_json(text)
    if not isinstance(value, list):
        raise OperationParseError(
            f"entry agent output must be one JSON list of operations, found {_kind(value)} (wrap operations in [...])"
        )
    return [entry_operation_from_obj(item, f"operation {index} of {len(value)}") for index, item in enumerate(value, 1)]


def parse_agent_output(part: MemoryPart, text: str) -> CoreOperation | list[EntryOperation]:
    """Parse the output of the agent for ``part``."""
    if part == "core":
        return parse_core_output(text)
    if part in ENTRY_PARTS:
        return parse_entry_output(text)
    raise ValueError(f"unknown memory part {part!r}")


def try_parse(part: MemoryPart, text: str) -> tuple[CoreOperation | list[EntryOperation] | None, str | None]:
    """``(operations, None)`` when ``text`` parses, else ``(None, error message)``; for format rewards."""
    try:
        return parse_agent_output(part, text), None
    except OperationParseError as exc:
        return None, str(exc)


# ---------------------------------------------------------------------------------------------
# canonical rendering (what the expert teachers emit)


def core_operation_to_obj(op: CoreOperation) -> dict[str, Any]:
    if isinstance(op, CoreAppend):
        return {"operation": "APPEND", "content": op.text}
    if isinstance(op, CoreReplace):
        return {"operation": "REPLACE", "old": op.old, "new": op.new}
    if isinstance(op, CoreRewrite):
        return {"operation": "REWRITE", "content": op.text}
    if isinstance(op, CoreSkip):
        return {"operation": "SKIP"}
    raise TypeError(f"not a core operation: {op!r}")


def entry_operation_to_obj(op: EntryOperation) -> dict[str, Any]:
    if isinstance(op, EntryAdd):
        obj: dict[str, Any] = {"operation": "ADD", "content": op.text}
        if op.timestamp is not None:
            obj["date"] = op.timestamp
    elif isinstance(op, EntryUpdate):
        obj = {"operation": "UPDATE", "id": op.entry_id, "content": op.text}
    elif isinstance(op, EntryMerge):
        obj = {"operation": "MERGE", "ids": list(op.entry_ids), "content": op.text}
    elif isinstance(op, EntryDelete):
        return {"operation": "DELETE", "id": op.entry_id}
    else:
        raise TypeError(f"not an entry operation: {op!r}")
    if op.turn_ids:
        obj["turns"] = list(op.turn_ids)
    return obj


def render_core_operation(op: CoreOperation) -> str:
    """Canonical one-line JSON for a core operation; raises ``ValueError`` if it would not parse back to ``op``."""
    obj = core_operation_to_obj(op)
    if core_operation_from_obj(obj) != op:
        raise ValueError(f"{op!r} is not canonical (text fields must be stripped)")
    return json.dumps(obj, ensure_ascii=False)


def render_entry_operations(ops: list[EntryOperation]) -> str:
    """Canonical one-line JSON list; raises ``ValueError`` if it would not parse back to ``ops``."""
    objs = [entry_operation_to_obj(op) for op in ops]
    for index, (obj, op) in enumerate(zip(objs, ops, strict=True), 1):
        if entry_operation_from_obj(obj, f"operation {index}") != op:
            raise ValueError(f"operation {index}: {op!r} is not canonical (text fields and ids must be stripped)")
    return json.dumps(objs, ensure_ascii=False)
