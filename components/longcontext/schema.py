"""The long-context sample schema: references into a document pool, never the input text itself.

One JSON Lines record per sample (``hotpotqa_eval.jsonl``, ``hotpotqa_train.jsonl``, ``squad_eval.jsonl``,
``needle_eval.jsonl``):

=================  ==========================================================================================
``id``             unique string, e.g. ``hotpotqa-eval-<_id>-00050``, ``squad-eval-<id>-00050`` or
                   ``needle_multikey-02048-003``
``task``           ``hotpotqa``, ``squad`` or ``needle_single`` / ``needle_multikey`` / ``needle_multivalue`` /
                   ``needle_multiquery``
``split``          ``eval`` or ``train``
``question``       the question asked after reading (no instructions around it)
``answers``        gold alternatives: any one is correct (``components.agent.scoring``); SQuAD keeps all its
                   distinct reference answers
``required_answers``  strings that must ALL appear in the answer (needle tasks; ``[]`` for HotpotQA and SQuAD), see
                   ``components.longcontext.answers``
``doc_ids``        the input, in reading order: ids of ``documents.jsonl`` records (a piece may repeat)
``gold_doc_ids``   the ids among ``doc_ids`` that hold the evidence (HotpotQA supporting paragraphs; the SQuAD
                   question's paragraph; the essay passages that carry a needle)
``length_docs``    ``len(doc_ids)``; for HotpotQA and SQuAD the target length (gold included)
``length_tokens``  measured tokens of the streamed input (``iter_context`` pieces joined by ``"\\n\\n"``,
                   tokenised piece by piece like ``components.agent.chunking.token_stream``) with the model's
                   tokenizer; the question is not counted
``target_tokens``  the haystack's target length (needle tasks); ``0`` for HotpotQA and SQuAD
``needles``        ``[{"text", "piece", "char", "depth"}]``: needle sentence, index into ``doc_ids``, the
                   character offset (a sentence boundary of that piece's text) where it is inserted, and its
                   relative position in the haystack (0..1)
``source_id``      HotpotQA ``_id`` or SQuAD ``id`` (empty for needles)
``meta``           free-form extras (HotpotQA ``type`` / ``level``; SQuAD ``title``; needle keys and values)
=================  ==========================================================================================

A document record is ``{"doc_id": int, "source": "hotpotqa" | "squad" | "essay", "title": str, "text": str}``;
ids are disjoint per source (``components.longcontext.sources``: HotpotQA from 0, essays from 10,000,000, SQuAD
from 20,000,000).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.errors import InputError

SCHEMA_VERSION = 1
TASKS = ("hotpotqa", "squad", "needle_single", "needle_multikey", "needle_multivalue", "needle_multiquery")
SPLITS = ("eval", "train")
SOURCES = ("hotpotqa", "squad", "essay")
SEPARATOR = "\n\n"  # between pieces: what ``context_text`` joins with and ``token_stream`` puts between pieces

_REQUIRED = {"id", "task", "split", "question", "answers", "doc_ids", "length_docs", "length_tokens"}
_OPTIONAL = {"required_answers", "gold_doc_ids", "target_tokens", "needles", "source_id", "meta"}


@dataclass(frozen=True)
class Document:
    """One pool record: a HotpotQA or SQuAD paragraph, or an essay passage."""

    doc_id: int
    source: str
    title: str
    text: str


@dataclass(frozen=True)
class Needle:
    """A needle sentence inserted into piece ``piece`` of a haystack at character ``char``."""

    text: str
    piece: int
    char: int
    depth: float


@dataclass(frozen=True)
class LongContextSample:
    """One question over one long input, held as references (see the module docstring)."""

    id: str
    task: str
    split: str
    question: str
    answers: tuple[str, ...]
    doc_ids: tuple[int, ...]
    length_tokens: int
    required_answers: tuple[str, ...] = ()
    gold_doc_ids: tuple[int, ...] = ()
    target_tokens: int = 0
    needles: tuple[Needle, ...] = ()
    source_id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def length_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def is_haystack(self) -> bool:
        """Needle tasks render their pieces as plain essay passages; HotpotQA and SQuAD as numbered documents."""
        return self.task.startswith("needle_")


def document_to_dict(doc: Document) -> dict[str, Any]:
    return {"doc_id": doc.doc_id, "source": doc.source, "title": doc.title, "text": doc.text}


def sample_to_dict(sample: LongContextSample) -> dict[str, Any]:
    """The JSON Lines record, keys in schema order (so equal samples serialise to equal bytes)."""
    return {
        "id": sample.id,
        "task": sample.task,
        "split": sample.split,
        "question": sample.question,
        "answers": list(sample.answers),
        "required_answers": list(sample.required_answers),
        "length_docs": sample.length_docs,
        "length_tokens": sample.length_tokens,
        "target_tokens": sample.target_tokens,
        "source_id": sample.source_id,
        "meta": dict(sample.meta),
        "needles": [{"text": n.text, "piece": n.piece, "char": n.char, "depth": n.depth} for n in sample.needles],
        "gold_doc_ids": list(sample.gold_doc_ids),
        "doc_ids": list(sample.doc_ids),
    }


# ---------------------------------------------------------------------------------------------
# validation


class _Bad(ValueError):
    """A field problem; turned into an ``InputError`` with the file and line by the caller."""


def _str(obj: Mapping[str, Any], key: str, non_empty: bool = True) -> str:
    value = obj[key]
    if not isinstance(value, str) or (non_empty and not value.strip()):
        raise _Bad(f"'{key}' must be a non-empty string, got {value!r}"[:200])
    return value


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(f"{what} must be an integer >= {minimum}, got {value!r}"[:200])
    return value


def _str_list(obj: Mapping[str, Any], key: str, non_empty: bool) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _Bad(f"'{key}' must be a list of non-empty strings")
    if non_empty and not value:
        raise _Bad(f"'{key}' must not be empty")
    return tuple(value)


def _int_list(obj: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise _Bad(f"'{key}' must be a list of document ids")
    for item in value:
        _int(item, f"'{key}' entry")
    return tuple(value)


def _needles(obj: Mapping[str, Any], pieces: int) -> tuple[Needle, ...]:
    raw = obj.get("needles", [])
    if not isinstance(raw, list):
        raise _Bad("'needles' must be a list")
    needles = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"text", "piece", "char", "depth"}:
            raise _Bad(f"needles[{i}] must be an object with text, piece, char and depth")
        text = _str(item, "text")
        piece = _int(item["piece"], f"needles[{i}].piece")
        if piece >= pieces:
            raise _Bad(f"needles[{i}].piece {piece} is outside doc_ids (length {pieces})")
        depth = item["depth"]
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
            raise _Bad(f"needles[{i}].depth must be a number in [0, 1], got {depth!r}")
        needles.append(Needle(text, piece, _int(item["char"], f"needles[{i}].char"), float(depth)))
    return tuple(needles)


def sample_from_dict(obj: Any) -> LongContextSample:
    """Validate one record; raises ``ValueError`` (``_Bad``) naming the field."""
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    missing = sorted(_REQUIRED - set(obj))
    if missing:
        raise _Bad(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - _REQUIRED - _OPTIONAL)
    if unknown:
        raise _Bad(f"unknown field(s) {', '.join(unknown)}")
    task, split = _str(obj, "task"), _str(obj, "split")
    if task not in TASKS:
        raise _Bad(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if split not in SPLITS:
        raise _Bad(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    doc_ids = _int_list(obj, "doc_ids")
    if not doc_ids:
        raise _Bad("'doc_ids' must not be empty")
    if _int(obj["length_docs"], "'length_docs'") != len(doc_ids):
        raise _Bad(f"'length_docs' is {obj['length_docs']} but doc_ids has {len(doc_ids)} entries")
    gold = _int_list(obj, "gold_doc_ids")
    stray = sorted(set(gold) - set(doc_ids))
    if stray:
        raise _Bad(f"gold_doc_ids {stray[:5]} are not in doc_ids")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise _Bad("'meta' must be an object")
    source_id = obj.get("source_id", "")
    if not isinstance(source_id, str):
        raise _Bad("'source_id' must be a string")
    return LongContextSample(
        id=_str(obj, "id"),
        task=task,
        split=split,
        question=_str(obj, "question"),
        answers=_str_list(obj, "answers", non_empty=True),
        doc_ids=doc_ids,
        length_tokens=_int(obj["length_tokens"], "'length_tokens'"),
        required_answers=_str_list(obj, "required_answers", non_empty=False),
        gold_doc_ids=gold,
        target_tokens=_int(obj.get("target_tokens", 0), "'target_tokens'"),
        needles=_needles(obj, len(doc_ids)),
        source_id=source_id,
        meta=meta,
    )


def iter_samples(path: str | os.PathLike[str]) -> Iterator[LongContextSample]:
    """Stream and validate a sample file; bad JSON, a bad field or a repeated id is an ``InputError`` with the line."""
    from components.io import iter_jsonl

    seen: set[str] = set()
    for line_no, obj in iter_jsonl(path):
        try:
            sample = sample_from_dict(obj)
        except _Bad as exc:
            raise InputError(path, str(exc), record=f"line {line_no}") from None
        if sample.id in seen:
            raise InputError(path, f"duplicate sample id {sample.id!r}", record=f"line {line_no}")
        seen.add(sample.id)
        yield sample


def load_samples(path: str | os.PathLike[str]) -> list[LongContextSample]:
    """All samples of a file (they are references, so even the paper's sets fit in memory)."""
    return list(iter_samples(path))


def document_from_dict(obj: Any) -> Document:
    """Validate one pool record; raises ``ValueError`` naming the field."""
    if not isinstance(obj, dict) or set(obj) != {"doc_id", "source", "title", "text"}:
        raise _Bad("expected an object with exactly doc_id, source, title and text")
    source = _str(obj, "source")
    if source not in SOURCES:
        raise _Bad(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return Document(_int(obj["doc_id"], "'doc_id'"), source, _str(obj, "title", non_empty=False), _str(obj, "text"))
