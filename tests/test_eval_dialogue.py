"""eval_dialogue: evidence recall@k on hand-built memories and turns, the seeded sample, the full-context cut, bad
input, and the stage end to end with the tiny model on the LoCoMo-format fixture (real writers, expert teacher,
embedder, answerer, judges and MLflow on SQLite).

The tiny random model answers nothing right, so the end-to-end test checks the plumbing and the reports, plus the
numbers that need no model: evidence recall of the retrieving methods and the memory the expert wrote.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
from mlflow import MlflowClient

from components.config import (
    BackendConfig,
    BackendsConfig,
    DialogueBaseline,
    EvalDialogueConfig,
    MemoryConfig,
    Params,
    SourceConfig,
)
from components.dialogue.schema import Conversation, Question, Session, Turn
from components.errors import ConfigError, InputError
from components.evaluation import dialogue
from components.memory.bank import MemoryBank
from components.memory.embedder import EmbeddingCache, HashingEmbedder
from components.memory.types import EntryAdd
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri
from tests.helpers import FIXTURES

LOCOMO = FIXTURES / "locomo_small.json"
JUDGES = ("containment", "f1", "em", "llm")

CONVERSATION = Conversation(
    "c1",
    ("Ines", "Tomas"),
    (
        Session(
            "s1",
            "2023-03-03T09:15",
            (
                Turn("t1", "Ines", "I finally adopted a cat, her name is Pimenta."),
                Turn("t2", "Tomas", "Congrats! How old is she?"),
                Turn("t3", "Ines", "Two years old, and she already owns the sofa."),
            ),
        ),
        Session(
            "s2",
            "2023-04-20T18:40",
            (
                Turn("t4", "Tomas", "How is the new job at the bakery?"),
                Turn("t5", "Ines", "Early mornings, but I love making sourdough."),
            ),
        ),
    ),
    (
        Question("q1", "What is the name of Ines's cat?", ("Pimenta",), "single-hop", ("t1", "t2")),
        Question("q2", "Where does Ines work and what does she bake?", ("bakery",), "multi-hop", ("t4", "t5")),
        Question("q3", "What is Tomas's favourite bread?", ("not answerable",), "adversarial"),
    ),
)


def cache() -> EmbeddingCache:
    return EmbeddingCache(HashingEmbedder())


def hand_written_bank() -> MemoryBank:
    """Three entries whose provenance is one turn each: the cat (t1), the bakery (t4), the sourdough (t5)."""
    bank = MemoryBank(MemoryConfig(embedder="hashing"), cache=cache())
    s1 = CONVERSATION.sessions[0]
    s2 = CONVERSATION.sessions[1]
    bank.apply_entries(
        "episodic",
        [EntryAdd("Ines adopted a cat named Pimenta.", turn_ids=("t1",))],
        session_id="s1",
        session_timestamp=s1.timestamp,
        session_turn_ids=[t.turn_id for t in s1.turns],
    )
    bank.apply_entries(
        "semantic",
        [EntryAdd("Ines works at a bakery.", turn_ids=("t4",)), EntryAdd("Ines bakes sourdough.", turn_ids=("t5",))],
        session_id="s2",
        session_timestamp=s2.timestamp,
        session_turn_ids=[t.turn_id for t in s2.turns],
    )
    return bank


def test_baselines_match_the_config_literal() -> None:
    assert get_args(DialogueBaseline) == dialogue.BASELINES
    assert set(dialogue.MEMORY_BASELINES) | set(dialogue.WHOLE_CONTEXT) <= set(dialogue.BASELINES)


def test_evidence_recall_is_the_share_of_evidence_turns_retrieved() -> None:
    assert dialogue.evidence_recall(("t1", "t2"), ["t1", "t9"]) == 0.5
    assert dialogue.evidence_recall(("t1", "t2"), ["t2", "t1", "t1"]) == 1.0
    assert dialogue.evidence_recall(("t1",), []) == 0.0
    assert dialogue.evidence_recall((), ["t1"]) is None  # no evidence: not counted


def test_evidence_recall_at_k_from_memory_provenance_and_raw_turns() -> None:
    bank = hand_written_bank()
    # k=3 retrieves all three entries: provenance {t1, t4, t5}; q1 needs t1, t2 -> 1/2; q2 needs t4, t5 -> 2/2;
    # q3 has no evidence and is left out of the mean: (0.5 + 1.0) / 2
    requests = dialogue.memory_requests("writer", [CONVERSATION], [bank], top_k=3)
    rows = [dialogue.request_row(r, "") for r in requests]
    assert [r.evidence_recall for r in rows] == [0.5, 1.0, None]
    assert dialogue.mean_evidence_recall(rows) == 0.75
    assert rows[0].retrieved[0].id == "epi-1" and rows[0].retrieved[0].turn_ids == ("t1",)  # cat first: 2 words
    assert "Ines adopted a cat named Pimenta." in requests[0].messages[1]["content"]
    # k=1: q1's best entry is still the cat (t1): 1/2; q2 gets one of its two evidence turns: 1/2
    one = [dialogue.request_row(r, "") for r in dialogue.memory_requests("writer", [CONVERSATION], [bank], top_k=1)]
    assert [r.evidence_recall for r in one] == [0.5, 0.5, None]

    # raw turns: with k=5 every turn of the conversation is shown, so every evidence id is covered
    rag = [dialogue.request_row(r, "") for r in dialogue.rag_requests([CONVERSATION], cache(), top_k=5)]
    assert [r.evidence_recall for r in rag] == [1.0, 1.0, None]
    assert [len(r.retrieved) for r in rag] == [5, 5, 5]
    # k=1: q1 ("... Ines's cat?") matches t1 ("... adopted a cat ...") best, which is one of its two evidence turns
    (first, *_) = dialogue.rag_requests([CONVERSATION], cache(), top_k=1)
    assert [item.id for item in first.shown] == ["t1"]
    assert "[t1] (2023-03-03) Ines: I finally adopted a cat" in first.messages[1]["content"]


def test_report_has_the_evaluated_writer_as_score_and_recall_only_for_retrieving_methods() -> None:
    bank = hand_written_bank()
    rows = [
        dialogue.request_row(r, p)
        for r, p in zip(
            dialogue.memory_requests("adrpo", [CONVERSATION], [bank], top_k=3),
            ["Pimenta", "at a bakery", "not answerable"],
            strict=True,
        )
    ]
    rows += [
        dialogue.request_row(dialogue.AnswerRequest("full_context", "c1", q, []), "Paris")
        for q in CONVERSATION.questions
    ]
    scored = dialogue.score_rows(rows, ("containment", "em"))
    report = dialogue.build_report(scored, ["adrpo", "full_context"], ("containment", "em"), {"adrpo": {"x": 1.0}}, 2)
    assert report["score"] == {"containment": 1.0, "em": round(2 / 3, 4)}  # "at a bakery" is not exactly "bakery"
    assert report["questions"] == 3 and report["conversations"] == 1 and report["sessions"] == 2
    adrpo = report["methods"]["adrpo"]
    assert adrpo["containment"]["by_category"] == {"adversarial": 1.0, "multi-hop": 1.0, "single-hop": 1.0}
    assert adrpo["evidence_recall_at_k"] == 0.75 and adrpo["x"] == 1.0
    assert "evidence_recall_at_k" not in report["methods"]["full_context"]
    assert report["methods"]["full_context"]["containment"]["overall"] == 0.0
    table = dialogue.plot_table(scored, ["adrpo", "full_context"], "containment")
    assert table[0] == {"method": "adrpo", "category": "overall", "accuracy": 1.0, "label": "overall / adrpo"}
    assert {(r["method"], r["category"]) for r in table} == {
        (m, c) for m in ("adrpo", "full_context") for c in ("overall", "adversarial", "multi-hop", "single-hop")
    }


def test_sample_is_seeded_keeps_order_and_skips_conversations_without_questions() -> None:
    silent = replace(CONVERSATION, conversation_id="silent", questions=())
    others = [replace(CONVERSATION, conversation_id=f"c{i}") for i in range(5)]
    pool = [silent, *others]
    sample = dialogue.sample_conversations(pool, 3, 2, seed=4)
    assert sample == dialogue.sample_conversations(pool, 3, 2, seed=4)
    assert len(sample) == 3 and "silent" not in {c.conversation_id for c in sample}
    ids = [c.conversation_id for c in sample]
    assert ids == sorted(ids)  # input order
    assert all(len(c.questions) == 2 for c in sample)
    assert all([q.question_id for q in c.questions] == sorted(q.question_id for q in c.questions) for c in sample)
    assert len(dialogue.sample_conversations(pool, 0, 0, seed=4)) == 5  # 0 = all (with questions)
    assert {len(c.questions) for c in dialogue.sample_conversations(pool, 0, 0, seed=4)} == {3}


def test_full_context_cuts_the_middle_to_fit_the_window(tiny_model_dir: Path) -> None:
    from components.agent.chunking import tokenizer_codec
    from components.agent.reader import prompt_length
    from components.llm.backends import TransformersBackend

    backend = TransformersBackend(BackendConfig(model=str(tiny_model_dir)))
    try:
        encode, decode = tokenizer_codec(backend.tokenizer)
        question = CONVERSATION.questions[0]
        whole = dialogue.full_context_requests([CONVERSATION], backend, encode, decode, 4096, 8)
        assert not whole[0].truncated and "Session s1, 2023-03-03T09:15:" in whole[0].messages[1]["content"]
        frame = prompt_length(
            backend,
            dialogue.full_context_requests([CONVERSATION], backend, encode, decode, 4096, 8)[0].messages,
            encode,
        ) - len(encode(dialogue.render_conversation(CONVERSATION)))
        window = frame + 8 + 30  # room for about 30 transcript tokens
        cut = dialogue.full_context_requests([CONVERSATION], backend, encode, decode, window, 8)
        assert all(r.truncated for r in cut) and cut[0].question == question
        prompt = cut[0].messages[1]["content"]
        assert "Session s1" in prompt and "sourdough" in prompt  # the start and the end survive
        assert "Pimenta" not in prompt  # the middle does not
        assert prompt_length(backend, cut[0].messages, encode) + 8 <= window + 2  # re-tokenised at the seams
        with pytest.raises(ConfigError, match="full_context_tokens"):
            dialogue.full_context_requests([CONVERSATION], backend, encode, decode, 50, 8)
    finally:
        backend.close()


def test_method_names_must_not_collide(tmp_path: Path) -> None:
    cfg = EvalDialogueConfig(writers=("models/adrpo", "other/adrpo"))
    with pytest.raises(ConfigError, match="adrpo"):
        dialogue.method_names(cfg)
    assert dialogue.method_names(EvalDialogueConfig()) == ["adrpo", "sft", "base", "full_context", "rag", "expert"]


# ---------------------------------------------------------------------------------------------
# the stage


def stage_params(root: Path, model_dir: Path, tracking_config, source: Path = LOCOMO, fmt: str = "locomo") -> Params:
    """Two writers (copies of the tiny model named adrpo and base), every baseline, every judge."""
    writers = []
    for name in ("adrpo", "base"):
        folder = root / "models" / name
        if not folder.exists():
            shutil.copytree(model_dir, folder)
        writers.append(str(folder))
    answerer = BackendConfig(model=str(model_dir), max_new_tokens=8, batch_size=8)
    cfg = EvalDialogueConfig(
        writers=tuple(writers),
        splits=(),
        sources=(SourceConfig(fmt, str(source)),),
        judges=JUDGES,
        max_conversations=2,
        writer_max_new_tokens=12,
        writer_batch_size=8,
        answer_max_new_tokens=6,
        report_path=str(root / "reports/eval_dialogue.json"),
        rows_path=str(root / "reports/eval_dialogue_rows.jsonl"),
        plot_path=str(root / "reports/eval_dialogue_plot.json"),
    )
    return Params(
        memory=MemoryConfig(embedder="hashing"),
        backends=BackendsConfig(teacher=answerer, answerer=answerer, judge=answerer),
        eval_dialogue=cfg,
        tracking=tracking_config,
    )


def test_stage_end_to_end_on_the_locomo_fixture(tmp_path: Path, tiny_model_dir: Path, tracking_config) -> None:
    params = stage_params(tmp_path, tiny_model_dir, tracking_config)
    result = run_stage("eval_dialogue", params)
    methods = ["adrpo", "base", "full_context", "rag", "expert"]

    report = json.loads((tmp_path / "reports/eval_dialogue.json").read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(result.metrics))
    assert report["questions"] == 5 and report["conversations"] == 2 and report["sessions"] == 3
    assert list(report["methods"]) == methods
    assert set(report["score"]) == set(JUDGES)
    assert report["score"] == {j: report["methods"]["adrpo"][j]["overall"] for j in JUDGES}
    categories = {"single-hop", "temporal", "adversarial", "multi-hop"}
    for method in methods:
        entry = report["methods"][method]
        assert all(set(entry[j]["by_category"]) == categories for j in JUDGES)
        assert all(0.0 <= entry[j]["overall"] <= 1.0 for j in JUDGES)
    for method in ("adrpo", "base", "expert"):
        assert {"memory_entries", "memory_core_chars", "memory_tokens"} <= set(report["methods"][method])
    assert "evidence_recall_at_k" not in report["methods"]["full_context"]
    assert report["methods"]["rag"]["evidence_recall_at_k"] == 1.0  # top_k 10 >= every conversation's turns
    expert = report["methods"]["expert"]
    assert expert["memory_entries"] > 0 and expert["memory_tokens"] > 0  # the heuristic teacher wrote memory
    assert expert["evidence_recall_at_k"] > 0

    rows = [json.loads(line) for line in (tmp_path / "reports/eval_dialogue_rows.jsonl").open(encoding="utf-8")]
    assert len(rows) == 5 * len(methods)
    assert {r["method"] for r in rows} == set(methods)
    first = next(r for r in rows if r["method"] == "rag" and r["question"] == "What is the name of Ines's cat?")
    assert first["answers"] == ["Pimenta"] and first["category"] == "single-hop" and first["evidence"] == ["D1:1"]
    assert set(first["scores"]) == set(JUDGES) and first["evidence_recall"] == 1.0
    assert {"id", "text", "turn_ids", "score"} == set(first["retrieved"][0])
    adversarial = next(r for r in rows if r["method"] == "adrpo" and r["category"] == "adversarial")
    assert adversarial["answers"] == ["not answerable"] and adversarial["evidence_recall"] is None

    plot = json.loads((tmp_path / "reports/eval_dialogue_plot.json").read_text(encoding="utf-8"))
    assert {(p["method"], p["category"]) for p in plot} == {(m, c) for m in methods for c in {*categories, "overall"}}
    overall = {p["method"]: p["accuracy"] for p in plot if p["category"] == "overall"}
    assert overall == {m: report["methods"][m]["containment"]["overall"] for m in methods}

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_config))
    experiment = client.get_experiment_by_name(tracking_config.experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`memforge.stage` = 'eval_dialogue'")
    metrics = run.data.metrics
    assert metrics["score/containment"] == report["score"]["containment"]
    assert metrics["methods/rag/evidence_recall_at_k"] == 1.0
    assert {f"write_seconds/{m}" for m in ("adrpo", "base", "expert")} <= set(metrics)
    assert {f"answer_seconds/{m}" for m in methods} | {"judge_seconds"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval_dialogue")}
    assert {"eval_dialogue/accuracy_by_category.png", "eval_dialogue/answers.json"} <= artifacts
    assert {"eval_dialogue/eval_dialogue.json", "eval_dialogue/eval_dialogue_rows.jsonl"} <= artifacts
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert {"eval_dialogue-locomo_small", "eval_dialogue-sample", "model"} <= set(inputs)
    assert len(json.loads(inputs["eval_dialogue-sample"].source)["dvc_md5"]) == 32  # the sampled set's digest


def bad_locomo(tmp_path: Path, edit) -> Path:
    data = json.loads(LOCOMO.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "bad_locomo.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def jsonl_without_answers(tmp_path: Path) -> Path:
    record = {
        "conversation_id": "c1",
        "speakers": ["Ines", "Tomas"],
        "sessions": [{"session_id": "s1", "timestamp": "2023-03-03T09:15", "turns": [
            {"turn_id": "t1", "speaker": "Ines", "text": "I adopted a cat."}
        ]}],
        "questions": [{"question_id": "q7", "question": "Which pet?", "answers": [], "category": "single-hop"}],
    }  # fmt: skip
    path = tmp_path / "no_answers.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("case", "fmt", "message"),
    [
        (
            "wrong_format",
            "locomo",
            r"longmemeval_small\.json \[record sample 0\]: sample 0: missing field 'conversation'",
        ),
        ("no_answers", "jsonl", r"no_answers\.jsonl \[record line 1\]: conversation 'c1': question 'q7' has no answer"),
        ("bad_evidence", "locomo", r"bad_locomo\.json \[record sample 1 \(conv-demo-2\)\]: .*'D9:9', not a turn id"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_no_report(
    tmp_path: Path, tiny_model_dir: Path, tracking_config, case: str, fmt: str, message: str
) -> None:
    def cite_missing_turn(data: list) -> None:
        data[1]["qa"][0]["evidence"] = ["D1:1", "D9:9"]

    source = {
        "wrong_format": FIXTURES / "longmemeval_small.json",
        "no_answers": jsonl_without_answers(tmp_path),
        "bad_evidence": bad_locomo(tmp_path, cite_missing_turn),
    }[case]
    params = stage_params(tmp_path, tiny_model_dir, tracking_config, source, fmt)
    with pytest.raises(InputError, match=message):
        run_stage("eval_dialogue", params)
    assert not (tmp_path / "reports").exists()


def test_unknown_evidence_can_be_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Released LoCoMo files carry a few label errors: ``unknown_evidence: drop`` evaluates them, saying how many."""

    def cite_missing_turn(data: list) -> None:
        data[1]["qa"][0]["evidence"] = ["D1:1", "D9:9"]

    source = SourceConfig("locomo", str(bad_locomo(tmp_path, cite_missing_turn)))
    with caplog.at_level(logging.WARNING):
        loaded = dialogue.load_conversations([], [source], "drop")
    question = loaded[1].conversation.questions[0]
    assert question.evidence == ("D1:1",)
    assert "dropped 1 evidence id(s)" in caplog.text
    with pytest.raises(InputError, match=r"unknown_evidence: drop evaluates it without them"):
        dialogue.load_conversations([], [source])
