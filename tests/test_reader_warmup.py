"""The reader's supervised warm-up: trajectories built offline from training questions, and a tiny reader trained on
them that then boxes its answers.

The trajectories are checked on a hand-made pool (facts whose chunk is known) and on real RULER-HotpotQA training
samples built by ``longcontext.build``: the reader's own chunks and prompts, a memory that grows only with facts
already read and stays within the reader's bound, and an answer step whose target is the gold answer boxed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.agent.chunking import tokenizer_codec
from components.agent.prompts import NO_MEMORY, answer_messages, update_messages
from components.agent.reader import MAX_CARRY, load_tokenizer
from components.agent.scoring import last_boxed
from components.config import LongContextConfig, MemAgentTrainConfig, ReaderConfig, ReaderWarmupConfig
from components.longcontext.schema import LongContextSample, load_samples
from components.longcontext.store import LongContextStore, context_text, iter_context
from components.longcontext.warmup import WarmupTrajectory, boxed, fact_sentence, warmup_trajectories
from components.training.memagent_rollout import TrainSample
from components.training.reader_warmup import boxed_check, warm_up_reader, warmup_examples

DOCS = {
    1: ("Alice", "Alice lives in Paris. She works at a hospital."),
    2: ("Bob", "Bob lives in Berlin with his sister."),
    3: ("Carol", "Carol likes coffee and music. She moved to Oslo in June."),
    4: ("Dave", "Dave is a doctor in Rome. His dog is called Sam."),
}
QUESTIONS = (
    ("alice", "Where does Alice live?", "Paris", 1),
    ("bob", "Where does Bob live?", "Berlin", 2),
    ("carol", "Where did Carol move?", "Oslo", 3),
    ("dog", "What is the name of the dog?", "Sam", 4),
)
READER = ReaderConfig(chunk_tokens=128, memory_tokens=16, answer_tokens=16)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Four one-line documents; each question's input is two other documents, then its gold one."""
    path = tmp_path_factory.mktemp("pool") / "documents.jsonl"
    records = [{"doc_id": i, "source": "hotpotqa", "title": t, "text": x} for i, (t, x) in DOCS.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    samples = [
        LongContextSample(
            id=sid,
            task="hotpotqa",
            split="train",
            question=question,
            answers=(answer,),
            doc_ids=(*[d for d in DOCS if d != gold][:2], gold),
            gold_doc_ids=(gold,),
            length_tokens=0,
        )
        for sid, question, answer, gold in QUESTIONS
    ]
    with LongContextStore(path) as store:
        yield store, samples


@pytest.fixture(scope="module")
def codec(tiny_model_dir: Path) -> Any:
    return tokenizer_codec(load_tokenizer(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def ruler(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """Real RULER-HotpotQA training samples (and their pool) at a small size."""
    from components.longcontext.build import TRAIN_FILE, build

    root = tmp_path_factory.mktemp("longcontext")
    cfg = LongContextConfig(
        eval_questions=1,
        eval_lengths_docs=(3,),
        train_questions=4,
        train_docs=5,
        squad_eval_questions=0,
        needle_samples=0,
        output_dir=str(root / "longcontext"),
        report_path=str(root / "report.json"),
    )
    build(cfg, tiny_model_dir)
    with LongContextStore.open(cfg.output_dir) as store:
        yield store, load_samples(Path(cfg.output_dir) / TRAIN_FILE)


def check_trajectory(trajectory: WarmupTrajectory, sample: LongContextSample, store: Any, reader: ReaderConfig, codec):
    """The reader's chunks and prompts; memory only from facts read so far, growing, bounded; the answer boxed."""
    encode, _ = codec
    *updates, answer = trajectory.steps
    assert [s.kind for s in updates] == ["update"] * len(updates) and answer.kind == "answer"
    assert "".join(s.chunk for s in updates) == context_text(sample, store)  # every token read, in order
    assert all(len(encode(s.chunk)) <= reader.chunk_tokens + MAX_CARRY for s in updates)
    read, memory, lines = "", "", []
    for step in updates:
        assert step.messages == update_messages(sample.question, memory, step.chunk)  # the reader's own prompt
        read += step.chunk
        new_lines = [] if step.target == NO_MEMORY else step.target.split("\n")
        assert new_lines[: len(lines)] == lines  # facts are only ever added
        assert all(line and line in read for line in new_lines)  # ... and only once read
        assert len(encode(step.target)) <= reader.memory_tokens
        memory, lines = ("" if step.target == NO_MEMORY else step.target), new_lines
    assert answer.messages == answer_messages(sample.question, memory)
    assert answer.target == boxed(sample.answers[0]) and last_boxed(answer.target) == sample.answers[0]


def test_hand_made_trajectories_add_each_fact_after_the_chunk_that_completes_it(pool, codec) -> None:
    store, samples = pool
    encode, decode = codec
    reader = ReaderConfig(chunk_tokens=6, memory_tokens=16, answer_tokens=8)
    trajectories = warmup_trajectories(samples, store, reader, encode, decode)
    assert [t.sample_id for t in trajectories] == [s.id for s in samples]
    for trajectory, sample in zip(trajectories, samples, strict=True):
        check_trajectory(trajectory, sample, store, reader, codec)
        (fact,) = trajectory.facts
        assert fact == fact_sentence(DOCS[sample.gold_doc_ids[0]][1], sample.answers[0]) and sample.answers[0] in fact
        first = next(i for i, s in enumerate(trajectory.steps) if s.target != NO_MEMORY)
        read = "".join(s.chunk for s in trajectory.steps[: first + 1])
        assert fact in read and fact not in read[: -len(trajectory.steps[first].chunk)]  # right after its chunk
        assert trajectory.facts_read == 1 and trajectory.memory == fact  # short enough to be kept whole
    assert fact_sentence("Carol likes coffee. She moved to Oslo.", "oslo") == "She moved to Oslo."
    assert fact_sentence("Bob is tall. He runs.", "Paris") == "Bob is tall."


def test_real_training_samples_give_well_formed_trajectories(ruler, codec) -> None:
    store, samples = ruler
    encode, decode = codec
    reader = ReaderConfig(chunk_tokens=200, memory_tokens=24, answer_tokens=16)
    trajectories = warmup_trajectories(samples, store, reader, encode, decode)
    assert len(trajectories) == len(samples) == 4
    for trajectory, sample in zip(trajectories, samples, strict=True):
        check_trajectory(trajectory, sample, store, reader, codec)
        assert len(trajectory.facts) == len(set(sample.gold_doc_ids)) == 2 and len(trajectory.steps) >= 3
        assert trajectory.facts_read == 2  # every gold paragraph lies in the input, so both facts get read
    examples = warmup_examples(trajectories)
    assert len(examples) == sum(len(t.steps) for t in trajectories)
    assert [e["completion"][0]["content"] for e in examples if e["part"] == "answer"] == [
        f"\\boxed{{{s.answers[0]}}}" for s in samples
    ]


def test_a_tiny_reader_warmed_up_on_the_trajectories_boxes_its_answers(
    pool, codec, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    store, samples = pool
    encode, decode = codec
    trajectories = warmup_trajectories(samples, store, READER, encode, decode)
    train = MemAgentTrainConfig(model_name_or_path=str(tiny_model_dir), seed=0)
    warmup = ReaderWarmupConfig(learning_rate=3e-2, max_steps=60, per_device_batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tens of thousands of parameters: more threads only contend
    try:
        outcome = warm_up_reader(warmup, train, trajectories, tmp_path / "warm")
    finally:
        torch.set_num_threads(threads)
    metrics = outcome.metrics()
    assert metrics["steps"] == 60 and metrics["trajectories"] == 4 and metrics["facts_read_fraction"] == 1.0
    assert metrics["examples_update"] == metrics["examples_answer"] == 4 and metrics["final_loss"] < 1.0
    reading = [TrainSample(s.id, s.question, s.answers, lambda s=s: iter_context(s, store)) for s in samples]
    check = boxed_check(tmp_path / "warm", READER, reading)  # the real reader, greedy
    assert check["questions"] == 4 and check["boxed_fraction"] == 1.0
    base = boxed_check(tiny_model_dir, READER, reading)
    assert base["boxed_fraction"] == 0.0  # the untrained reader never boxes
