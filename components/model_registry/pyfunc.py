"""memforge's two trained models as MLflow pyfunc models: the memory writer and the MemAgent reader.

Both are self-contained. Artifacts: ``model`` (the trained model folder), ``settings`` (a JSON file written from
params at registration, so loading needs no params.yaml) and, for the writer, ``embedder`` (the sentence embedder's
folder when ``memory.embedder`` is a local model; a hub id stays a hub id, ``hashing`` needs none). memforge's
``components`` package travels as code (``code_paths``), and the third-party requirements are pinned explicitly
from the installed versions (no environment inference, no network). Generation is local transformers (CUDA when
present, else CPU), greedy.

- ``memforge-membuilder`` (``MemBuilderModel``): input ``conversation`` (one conversation in the memforge JSON
  schema, as a JSON string) and ``question``; output ``answer`` and ``memory`` (the memory bank as JSON,
  ``MemoryBank.to_dict``). Each distinct conversation of the input is written into memory once, session by session,
  by the model's four agents (``build_memories``, conversations in lockstep); every question is then answered from
  its conversation's memory (core block + top-k retrieved entries, ``answer_messages``, today = the last session's
  date) by the same model. The pipeline's evaluation (eval_dialogue) answers with ``backends.answerer`` instead;
  this model needs nothing but itself.
- ``memforge-memagent`` (``MemAgentModel``): input ``document`` and ``question``; output ``answer`` (the last
  ``\\boxed{}`` content, else the whole completion) and ``memory`` (the reader's final memory), read chunk by chunk
  by the MemAgent reader (``components.agent.reader.read``), all rows side by side.

This module imports mlflow (a ``PythonModel`` subclass needs it at class definition): callers import it lazily.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import mlflow.pyfunc
from mlflow.types.type_hints import TypeFromExample  # the input is what the example is: a DataFrame

from components.config import BackendConfig, MemoryConfig, Params, ReaderConfig, build_dataclass, to_dict
from components.errors import InputError, MemforgeError
from components.model_registry.tags import MODEL_ARTIFACT

Kind = Literal["membuilder", "memagent"]
KINDS: tuple[Kind, ...] = ("membuilder", "memagent")

SETTINGS_ARTIFACT = "settings"
EMBEDDER_ARTIFACT = "embedder"
SETTINGS_FILE = "memforge_pyfunc.json"
INPUT = "model input"  # how errors name the rows given to predict

INPUT_COLUMNS: dict[Kind, tuple[str, str]] = {
    "membuilder": ("conversation", "question"),
    "memagent": ("document", "question"),
}
OUTPUT_COLUMNS = ("answer", "memory")
BASE_REQUIREMENTS = ("mlflow", "torch", "transformers", "numpy", "pandas")
EMBEDDER_REQUIREMENTS = ("sentence-transformers",)

EXAMPLE_CONVERSATION: dict[str, Any] = {
    "conversation_id": "example",
    "speakers": ["Ana", "assistant"],
    "sessions": [
        {
            "session_id": "S1",
            "timestamp": "2024-03-02T10:00",
            "turns": [
                {"turn_id": "S1:1", "speaker": "Ana", "text": "I moved to Lisbon last week for a new job."},
                {"turn_id": "S1:2", "speaker": "assistant", "text": "Congratulations on the move!"},
            ],
        }
    ],
}
EXAMPLE_DOCUMENT = "Ana moved to Lisbon in March 2024. She works at a hospital there as a nurse."


# ---------------------------------------------------------------------------------------------
# settings: what each model runs with, from params at registration


def membuilder_settings(params: Params) -> dict[str, Any]:
    """The writer's settings: the memory bank (``memory``), the writer's generation (``eval_dialogue.writer_*``, greedy)
    and answering (``eval_dialogue.answer_max_new_tokens``, ``eval_dialogue.top_k`` retrieved entries)."""
    cfg = params.eval_dialogue
    return {
        "memory": to_dict(params.memory),
        "writer": {
            "max_new_tokens": cfg.writer_max_new_tokens,
            "batch_size": cfg.writer_batch_size,
            "dtype": cfg.writer_dtype,
            "temperature": 0.0,
        },
        "answer_max_new_tokens": cfg.answer_max_new_tokens,
        "answer_top_k": cfg.top_k,
    }


def memagent_settings(params: Params) -> dict[str, Any]:
    """The reader's settings: ``memagent.reader`` on the transformers engine (the pyfunc runs anywhere)."""
    return {"reader": to_dict(dataclasses.replace(params.memagent.reader, backend="transformers"))}


def model_settings(kind: Kind, params: Params) -> dict[str, Any]:
    """The settings artifact of a ``kind`` model."""
    return membuilder_settings(params) if kind == "membuilder" else memagent_settings(params)


def _read_settings(context: Any) -> dict[str, Any]:
    path = Path(context.artifacts[SETTINGS_ARTIFACT])
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MemforgeError(f"{path}: unreadable pyfunc settings: {exc}") from None
    if not isinstance(settings, dict):
        raise MemforgeError(f"{path}: pyfunc settings must be a JSON object")
    return settings


# ---------------------------------------------------------------------------------------------
# input rows


def input_rows(model_input: Any, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """The ``columns`` of every row of ``model_input`` (a DataFrame or a list of dicts) as strings; a missing column
    or a non-text or empty value is an ``InputError`` naming the row and column."""
    import pandas as pd

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(INPUT, f"missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    rows = []
    for index, values in enumerate(zip(*(frame[column].tolist() for column in columns), strict=True)):
        for column, value in zip(columns, values, strict=True):
            if not isinstance(value, str) or not value.strip():
                raise InputError(INPUT, f"'{column}' must be a non-empty string", record=f"row {index}")
        rows.append(tuple(values))
    return rows


def parse_conversation(text: str, row: int) -> Any:
    """The ``Conversation`` in a JSON string; bad JSON or a schema violation is an ``InputError`` naming the row."""
    from components.dialogue.schema import SchemaError, conversation_from_dict

    try:
        return conversation_from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise InputError(INPUT, f"'conversation' is not JSON: {exc.msg}", record=f"row {row}") from None
    except SchemaError as exc:
        raise InputError(INPUT, f"'conversation': {exc}", record=f"row {row}") from None


def output_frame(answers: Sequence[str], memories: Sequence[str]) -> Any:
    """The output DataFrame: one ``answer`` and ``memory`` per input row."""
    import pandas as pd

    return pd.DataFrame({"answer": list(answers), "memory": list(memories)}, columns=list(OUTPUT_COLUMNS))


# ---------------------------------------------------------------------------------------------
# the models


class MemBuilderModel(mlflow.pyfunc.PythonModel):
    """The trained memory writer: writes each conversation's memory session by session and answers from it."""

    def load_context(self, context: Any) -> None:
        from components.llm.backends import create_backend
        from components.memory.construction import bank_factory

        settings = _read_settings(context)
        memory = build_dataclass(MemoryConfig, settings["memory"], "memory")
        if EMBEDDER_ARTIFACT in context.artifacts:
            memory = dataclasses.replace(memory, embedder=context.artifacts[EMBEDDER_ARTIFACT])
        writer = build_dataclass(
            BackendConfig,
            {**settings["writer"], "kind": "transformers", "model": context.artifacts[MODEL_ARTIFACT]},
            "writer",
        )
        self._memory = memory
        self._answer_tokens = int(settings["answer_max_new_tokens"])
        self._answer_top_k = int(settings["answer_top_k"])
        self._backend = create_backend(writer)
        # memory.compression 'llm': the model condenses its own core block
        self._make_bank = bank_factory(Params(memory=memory), teacher_backend=self._backend)

    def predict(self, context: Any, model_input: TypeFromExample, params: dict[str, Any] | None = None) -> Any:
        """One ``answer`` and ``memory`` per (``conversation``, ``question``) row."""
        from components.memory.construction import build_memories
        from components.memory.teachers import LLMTeacher

        rows = input_rows(model_input, INPUT_COLUMNS["membuilder"])
        distinct: dict[str, int] = {}
        conversations = []
        for row, (text, _) in enumerate(rows):
            if text not in distinct:
                distinct[text] = len(conversations)
                conversations.append(parse_conversation(text, row))
        owner = [distinct[text] for text, _ in rows]
        teacher = LLMTeacher(self._backend, name="membuilder")
        banks = build_memories(conversations, teacher, self._make_bank, self._memory.top_k)
        answers = self._answer(conversations, banks, owner, [question for _, question in rows])
        memories = [json.dumps(bank.to_dict(), ensure_ascii=False) for bank in banks]
        return output_frame(answers, [memories[i] for i in owner])

    def _answer(
        self, conversations: Sequence[Any], banks: Sequence[Any], owner: Sequence[int], questions: Sequence[str]
    ) -> list[str]:
        """Every question answered from its conversation's memory, in one batched generate call."""
        from components.llm.backends import SamplingParams
        from components.memory.prompts import answer_messages

        prompts: list[Any] = [None] * len(questions)
        for index, bank in enumerate(banks):
            rows = [row for row, conversation in enumerate(owner) if conversation == index]
            if not rows:
                continue
            sessions = conversations[index].sessions
            today = sessions[-1].timestamp[:10] if sessions else ""
            hits = bank.retrieve([questions[row] for row in rows], k=self._answer_top_k)
            for row, found in zip(rows, hits, strict=True):
                prompts[row] = answer_messages(questions[row], bank.core, [hit.entry for hit in found], today)
        generations = self._backend.generate(prompts, SamplingParams(max_new_tokens=self._answer_tokens))
        return [choices[0].text.strip() for choices in generations]


class MemAgentModel(mlflow.pyfunc.PythonModel):
    """The trained MemAgent reader: reads each document chunk by chunk into its memory and answers from it."""

    def load_context(self, context: Any) -> None:
        from components.agent.reader import build_reader_backend

        self._reader = build_dataclass(ReaderConfig, _read_settings(context)["reader"], "reader")
        self._backend, self._encode, self._decode = build_reader_backend(
            context.artifacts[MODEL_ARTIFACT], self._reader
        )

    def predict(self, context: Any, model_input: TypeFromExample, params: dict[str, Any] | None = None) -> Any:
        """One ``answer`` and final ``memory`` per (``document``, ``question``) row."""
        from components.agent.reader import ReadRequest, read

        rows = input_rows(model_input, INPUT_COLUMNS["memagent"])
        requests = [
            ReadRequest(id=f"row {index}", question=question, pieces=[document])
            for index, (document, question) in enumerate(rows)
        ]
        results = read(requests, self._backend, self._reader, self._encode, self._decode)
        answers = [result.boxed if result.boxed is not None else result.answer.strip() for result in results]
        return output_frame(answers, [result.memory for result in results])


MODEL_CLASSES: dict[Kind, type[mlflow.pyfunc.PythonModel]] = {
    "membuilder": MemBuilderModel,
    "memagent": MemAgentModel,
}


# ---------------------------------------------------------------------------------------------
# saving


def signature(kind: Kind) -> Any:
    """The model signature: two string input columns, ``answer`` and ``memory`` out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", column) for column in INPUT_COLUMNS[kind]]),
        outputs=Schema([ColSpec("string", column) for column in OUTPUT_COLUMNS]),
    )


def input_example(kind: Kind) -> Any:
    """A one-row input example (a one-session conversation, or a short document) with a question."""
    import pandas as pd

    if kind == "membuilder":
        return pd.DataFrame([{"conversation": json.dumps(EXAMPLE_CONVERSATION), "question": "Where does Ana live?"}])
    return pd.DataFrame([{"document": EXAMPLE_DOCUMENT, "question": "Where does Ana work?"}])


def bundled_embedder(settings: Mapping[str, Any]) -> Path | None:
    """The local embedder folder a writer's settings name (shipped as an artifact); None for hashing or a hub id."""
    from components.memory.embedder import resolve_model_spec

    spec = str(settings.get("memory", {}).get("embedder", ""))
    if not spec or spec == "hashing" or spec.startswith("hashing:"):
        return None
    folder = Path(resolve_model_spec(spec))
    return folder if folder.is_dir() else None


def pip_requirements(kind: Kind, settings: Mapping[str, Any]) -> list[str]:
    """The model's third-party requirements, pinned to the installed versions."""
    names = list(BASE_REQUIREMENTS)
    embedder = str(settings.get("memory", {}).get("embedder", "hashing"))
    if kind == "membuilder" and not embedder.startswith("hashing"):
        names += EMBEDDER_REQUIREMENTS
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def save_pyfunc(kind: Kind, model_dir: str | Path, settings: Mapping[str, Any], path: str | Path) -> None:
    """Write the ``kind`` pyfunc model of ``model_dir`` with ``settings`` to the new folder ``path``."""
    import components

    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / SETTINGS_FILE
        settings_file.write_text(json.dumps(dict(settings), indent=2, sort_keys=True), encoding="utf-8")
        artifacts = {MODEL_ARTIFACT: str(model_dir), SETTINGS_ARTIFACT: str(settings_file)}
        embedder = bundled_embedder(settings) if kind == "membuilder" else None
        if embedder is not None:
            artifacts[EMBEDDER_ARTIFACT] = str(embedder)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=MODEL_CLASSES[kind](),
            artifacts=artifacts,
            signature=signature(kind),
            input_example=input_example(kind),
            pip_requirements=pip_requirements(kind, settings),
            code_paths=[str(Path(components.__file__).parent)],
        )
    for cache in Path(path).rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
