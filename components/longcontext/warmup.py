"""Reading trajectories for the reader's supervised warm-up, built offline from the training questions.

A 135M model does not follow MemAgent's answer format unprompted, so GRPO over its readings gets reward 0 everywhere.
memforge first teaches the format (``components.training.reader_warmup``) on readings written here, one per training
question, with exactly the reader's chunks and prompts:

- the input is chunked as the reader chunks it (``token_stream`` -> ``chunk_ids`` of ``reader.chunk_tokens`` ->
  ``chunk_texts``, whole characters per chunk), with the reader's tokenizer;
- the sample's *facts* are its gold paragraphs (HotpotQA's supporting paragraphs, ``gold_doc_ids``), each as one
  sentence of its text: the first sentence that contains the gold answer, else the paragraph's first sentence;
- after each chunk the memory is the previous memory plus every fact whose whole sentence has now been read (a
  sentence split over two chunks counts after the second), one fact per line; each fact is cut to an equal share
  of ``reader.memory_tokens`` (``bound_memory``), so the memory always fits the reader's bound. Before any fact is
  read the memory is ``NO_MEMORY``, the text the released prompt shows for an empty memory;
- the final step's target is the gold answer in ``\\boxed{}``.

Every (prompt, target) pair is built with ``update_messages`` / ``answer_messages``, so training and inference see
the same text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from components.agent.chunking import Encode, chunk_ids, token_stream
from components.agent.prompts import NO_MEMORY, answer_messages, update_messages
from components.agent.reader import Decode, bound_memory, chunk_texts
from components.config import ReaderConfig
from components.llm.backends import Message
from components.longcontext.schema import SEPARATOR, LongContextSample
from components.longcontext.sources import sentence_starts
from components.longcontext.store import LongContextStore, iter_context


@dataclass(frozen=True)
class WarmupStep:
    """One supervised example: the reader's prompt and the target completion. ``chunk`` is the text read at an
    ``update`` step ("" for the ``answer``); ``target`` of an update is the whole new memory."""

    kind: Literal["update", "answer"]
    messages: list[Message]
    target: str
    chunk: str = ""


@dataclass(frozen=True)
class WarmupTrajectory:
    """The warm-up reading of one training question: its facts and one step per chunk, then the answer."""

    sample_id: str
    question: str
    answer: str
    facts: tuple[str, ...]
    steps: tuple[WarmupStep, ...]

    @property
    def memory(self) -> str:
        """The last memory written (``NO_MEMORY`` when no fact was read)."""
        updates = [step.target for step in self.steps if step.kind == "update"]
        return updates[-1] if updates else NO_MEMORY

    @property
    def facts_read(self) -> int:
        """Facts (whole or cut) in the last memory."""
        return 0 if self.memory == NO_MEMORY else len(self.memory.split("\n"))


def boxed(answer: str) -> str:
    """The answer step's target: the gold answer in ``\\boxed{}``."""
    return f"\\boxed{{{answer}}}"


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` as literal, stripped spans (``sentence_starts`` boundaries), none empty."""
    starts = sentence_starts(text)
    spans = (text[a:b].strip() for a, b in pairwise(starts))
    return [span for span in spans if span]


def fact_sentence(text: str, answer: str) -> str:
    """The sentence of a gold paragraph kept as its fact: the first that contains ``answer`` (any case), else the
    first."""
    found = sentences(text) or [text.strip()]
    return next((s for s in found if answer.lower() in s.lower()), found[0])


def gold_facts(sample: LongContextSample, store: LongContextStore) -> tuple[str, ...]:
    """One fact per gold paragraph of ``sample``, in the order of ``gold_doc_ids``."""
    answer = sample.answers[0]
    return tuple(fact_sentence(store.get(doc_id).text, answer) for doc_id in dict.fromkeys(sample.gold_doc_ids))


def reader_chunks(pieces: Iterable[str], reader: ReaderConfig, encode: Encode, decode: Decode) -> Iterator[str]:
    """The chunk texts the reader reads (``components.agent.reader.read``'s chunking)."""
    stream = token_stream(pieces, encode, SEPARATOR)
    for _, text in chunk_texts(chunk_ids(stream, reader.chunk_tokens), decode):
        yield text


def memory_text(facts: list[str], share: int, reader: ReaderConfig, encode: Encode, decode: Decode) -> str:
    """The facts read so far, each cut to ``share`` tokens, one per line, within ``reader.memory_tokens``."""
    if not facts:
        return NO_MEMORY
    lines = [bound_memory(fact, encode, decode, share)[0].strip() for fact in facts]
    return bound_memory("\n".join(line for line in lines if line), encode, decode, reader.memory_tokens)[0].strip()


def build_trajectory(
    sample: LongContextSample,
    facts: tuple[str, ...],
    chunks: Iterable[str],
    reader: ReaderConfig,
    encode: Encode,
    decode: Decode,
) -> WarmupTrajectory:
    """The warm-up reading of ``sample`` over ``chunks`` (module docstring)."""
    share = max(1, reader.memory_tokens // max(1, len(facts)) - 1)  # a newline between facts
    longest = max((len(fact) for fact in facts), default=0)
    steps: list[WarmupStep] = []
    tail, found, memory = "", [], ""
    for chunk in chunks:
        window = tail + chunk  # a fact completed by this chunk started at most ``longest`` characters before it
        found += [fact for fact in facts if fact not in found and fact in window]
        tail = window[-longest:] if longest else ""
        target = memory_text(found, share, reader, encode, decode)
        steps.append(WarmupStep("update", update_messages(sample.question, memory, chunk), target, chunk))
        memory = "" if target == NO_MEMORY else target
    steps.append(WarmupStep("answer", answer_messages(sample.question, memory), boxed(sample.answers[0])))
    return WarmupTrajectory(sample.id, sample.question, sample.answers[0], facts, tuple(steps))


def warmup_trajectories(
    samples: Iterable[LongContextSample], store: LongContextStore, reader: ReaderConfig, encode: Encode, decode: Decode
) -> list[WarmupTrajectory]:
    """One warm-up trajectory per training sample, its input streamed from ``store``."""
    return [
        build_trajectory(
            sample,
            gold_facts(sample, store),
            reader_chunks(iter_context(sample, store), reader, encode, decode),
            reader,
            encode,
            decode,
        )
        for sample in samples
    ]
