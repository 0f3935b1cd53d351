"""The register stage and the pyfunc models on a real temporary SQLite registry with tiny real models.

Round trip (register both models, load each by ``models:/NAME@challenger``, predict), a retried registration that
creates nothing, a changed model folder that does, a failure while aliasing that leaves nothing behind, and the
bad inputs: a missing or corrupt model folder, a report without the promotion metric, an evaluation of another
model, an unreachable registry, malformed model input.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import (
    ADRPOConfig,
    EvalDialogueConfig,
    EvalLongContextConfig,
    ExpertConfig,
    IngestConfig,
    LongContextConfig,
    MemAgentConfig,
    MemAgentTrainConfig,
    MemoryConfig,
    ModelConfig,
    Params,
    ReaderConfig,
    RegisterConfig,
    SynthQAConfig,
    TrackingConfig,
)
from components.errors import ConfigError, InputError, ModelLoadError
from components.llm.model_assets import SMOKE_NOTE, prepare_model
from components.memory.bank import MemoryBank
from components.model_registry.tags import (
    CHALLENGER,
    EVAL_SET_DIGEST,
    GIT_COMMIT,
    MODEL_DIGEST,
    PARAMS_DIGEST,
    RUN_ID,
    TRAINING_SCOPE,
    eval_metric_tag,
)
from components.stages.runner import run_stage
from components.tracking import resolve_tracking_uri
from tests.helpers import FIXTURES
from tests.llm_fixtures import build_chatty_model, free_port

MEMBUILDER = "memforge-membuilder"
MEMAGENT = "memforge-memagent"


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny models whose output depends on the prompt: a writer and a reader (and a retrained writer)."""
    root = tmp_path_factory.mktemp("models")
    chatty_writer = build_chatty_model(tiny_model_dir, root / "chatty", seed=1)
    prepare_model(ModelConfig(name_or_path=str(chatty_writer), output_dir=str(root / "adrpo")), root / "adrpo")
    return {
        "writer": root / "adrpo",  # with a model card from the CPU default: a smoke run
        "writer_retrained": build_chatty_model(tiny_model_dir, root / "adrpo2", seed=2),
        "reader": build_chatty_model(tiny_model_dir, root / "memagent", seed=3),
    }


def workspace(root: Path, writer: Path, reader: Path) -> Params:
    """Params over a small workspace under ``root``: the eval split, a long-context eval file, both reports."""
    dialogues, longcontext, reports = root / "data/dialogues", root / "data/longcontext", root / "reports"
    for folder in (dialogues, longcontext, reports, root / "data/trajectories", root / "data/qa"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "conversations.jsonl", dialogues / "eval.jsonl")
    (longcontext / "needle_eval.jsonl").write_text('{"id": "n1"}\n', encoding="utf-8")
    (reports / "eval_dialogue.json").write_text(
        json.dumps({"score": {"containment": 0.4, "f1": 0.25}, "methods": {"rag": {"containment": 0.3}}}),
        encoding="utf-8",
    )
    (reports / "eval_longcontext.json").write_text(
        json.dumps({"mean": {"memagent": {"mean_correct": 0.5}, "full_context": {"mean_correct": 0.0}}}),
        encoding="utf-8",
    )
    return Params(
        ingest=IngestConfig(output_dir=str(dialogues)),
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(output_dir=str(root / "data/trajectories")),
        synth_qa=SynthQAConfig(output_dir=str(root / "data/qa")),
        adrpo=ADRPOConfig(output_dir=str(writer)),
        longcontext=LongContextConfig(output_dir=str(longcontext)),
        memagent=MemAgentConfig(
            reader=ReaderConfig(chunk_tokens=64, memory_tokens=12, answer_tokens=8, batch_size=4),
            train=MemAgentTrainConfig(output_dir=str(reader)),
            eval=EvalLongContextConfig(
                model_name_or_path=str(reader), tasks=("needle",), report_path=str(reports / "eval_longcontext.json")
            ),
        ),
        eval_dialogue=EvalDialogueConfig(
            writers=(str(writer),),
            writer_max_new_tokens=24,
            answer_max_new_tokens=8,
            report_path=str(reports / "eval_dialogue.json"),
        ),
        register=RegisterConfig(report_path=str(reports / "register.json")),
        tracking=TrackingConfig(experiment="memforge-test", store_dir=str(root / "mlflow")),
    )


@pytest.fixture
def params(tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.chdir(tmp_path)  # nothing MLflow writes lands in the repository
    return workspace(tmp_path, models["writer"], models["reader"])


def client_for(params: Params) -> MlflowClient:
    return MlflowClient(tracking_uri=resolve_tracking_uri(params.tracking))


def versions(client: MlflowClient, name: str) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def aliases(client: MlflowClient, name: str) -> dict[str, int]:
    return {alias: int(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_register_then_load_by_alias_and_predict(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_stage("register", params)

    assert result.metrics == {
        "membuilder": {"version": 1, "created": True},
        "memagent": {"version": 1, "created": True},
    }
    assert json.loads(Path(params.register.report_path).read_text()) == result.metrics
    client = client_for(params)
    version = client.get_model_version_by_alias(MEMBUILDER, CHALLENGER)
    tags = version.tags
    assert int(version.version) == 1
    assert tags[MODEL_DIGEST].endswith(".dir") and tags[GIT_COMMIT] and tags[PARAMS_DIGEST] and tags[EVAL_SET_DIGEST]
    assert float(tags[eval_metric_tag("score/containment")]) == 0.4
    assert float(tags[eval_metric_tag("methods/rag/containment")]) == 0.3
    assert any(key.endswith("data/trajectories") for key in tags)
    # the smoke run says so on the version; a folder without a memforge card is unknown
    assert (tags[TRAINING_SCOPE], version.description) == ("smoke", SMOKE_NOTE)
    run = client.get_run(tags[RUN_ID])
    assert run.data.tags["memforge.registered.membuilder"] == f"{MEMBUILDER}/1"
    assert run.data.tags["memforge.registered.memagent"] == f"{MEMAGENT}/1"
    reader_tags = client.get_model_version_by_alias(MEMAGENT, CHALLENGER).tags
    assert float(reader_tags[eval_metric_tag("mean/memagent/mean_correct")]) == 0.5
    assert reader_tags[EVAL_SET_DIGEST] != tags[EVAL_SET_DIGEST]
    assert reader_tags[TRAINING_SCOPE] == "unknown"

    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", resolve_tracking_uri(params.tracking))
    writer = mlflow.pyfunc.load_model(f"models:/{MEMBUILDER}@{CHALLENGER}")
    conversation = (FIXTURES / "conversations.jsonl").read_text(encoding="utf-8").splitlines()[0]
    out = writer.predict(
        pd.DataFrame({"conversation": [conversation, conversation], "question": ["Which day does Ana run?", "Why?"]})
    )
    assert list(out.columns) == ["answer", "memory"] and len(out) == 2
    assert all(isinstance(answer, str) for answer in out["answer"])
    memory = json.loads(out["memory"][0])
    assert MemoryBank.from_dict(memory, MemoryConfig(embedder="hashing")).to_dict() == memory
    assert out["memory"][1] == out["memory"][0]  # one conversation, written once
    with pytest.raises(InputError, match=r"row 0.*not JSON"):
        writer.predict(pd.DataFrame({"conversation": ["{not json"], "question": ["Where?"]}))

    reader = mlflow.pyfunc.load_model(f"models:/{MEMAGENT}@{CHALLENGER}")
    document = "Ana moved to Lisbon in March 2024 and works at a hospital there. " * 6
    out = reader.predict(pd.DataFrame({"document": [document], "question": ["Where does Ana work?"]}))
    assert list(out.columns) == ["answer", "memory"] and isinstance(out["answer"][0], str)
    assert out["memory"][0]  # the chatty model writes a memory after each chunk


def test_retried_registration_creates_no_new_version(
    params: Params, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.model_registry import register as registration

    loaded: list[Path] = []  # the folders loaded (the real check runs)
    check = registration.check_model_folder
    monkeypatch.setattr(registration, "check_model_folder", lambda folder: check(folder) or loaded.append(folder))
    run_stage("register", params)
    again = run_stage("register", params)
    assert len(loaded) == 2  # the repeated run loaded no model: both folders were registered already

    assert again.metrics["membuilder"] == {"version": 1, "created": False}
    assert again.metrics["memagent"] == {"version": 1, "created": False}
    client = client_for(params)
    assert versions(client, MEMBUILDER) == [1] and versions(client, MEMAGENT) == [1]

    retrained = replace(
        params,
        adrpo=replace(params.adrpo, output_dir=str(models["writer_retrained"])),
        eval_dialogue=replace(params.eval_dialogue, writers=(str(models["writer_retrained"]),)),
    )
    third = run_stage("register", retrained)
    assert third.metrics["membuilder"] == {"version": 2, "created": True}
    assert third.metrics["memagent"] == {"version": 1, "created": False}
    assert aliases(client, MEMBUILDER) == {CHALLENGER: 2}
    assert [Path(folder) for folder in loaded[2:]] == [models["writer_retrained"]]  # only the new folder loads


class AliasFails(MlflowClient):
    """The real client on the real store, failing when the alias would move."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(tracking_uri=tracking_uri)
        self.attempted: list[int] = []  # the versions the alias was to move to

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.attempted.append(int(version))
        raise RuntimeError(f"registry went away before {alias} moved to {version}")


def test_failure_while_aliasing_leaves_no_version_and_no_alias(params: Params) -> None:
    from components.model_registry.pyfunc import model_settings
    from components.model_registry.register import prepare_registration, register_all
    from components.tracking import stage_run

    client = AliasFails(tracking_uri=resolve_tracking_uri(params.tracking))
    registration = prepare_registration(
        params.register.membuilder,
        "membuilder",
        params.adrpo.output_dir,
        model_settings("membuilder", params),
        eval_report_path=params.eval_dialogue.report_path,
        eval_set_digest="digest",
        lineage={},
    )
    with stage_run("register", params.tracking) as run, pytest.raises(RuntimeError, match="registry went away"):
        register_all(client, {"membuilder": registration}, run.run_id)
    assert client.attempted == [1]  # version 1 existed when the alias failed
    assert versions(client, MEMBUILDER) == []
    assert aliases(client, MEMBUILDER) == {}
    assert run_stage("register", params).metrics["membuilder"]["created"] is True  # the retry registers it


def test_missing_or_corrupt_model_folder_registers_nothing(params: Params, tmp_path: Path) -> None:
    missing = tmp_path / "models/nowhere"
    broken = replace(
        params,
        memagent=replace(
            params.memagent,
            train=replace(params.memagent.train, output_dir=str(missing)),
            eval=replace(params.memagent.eval, model_name_or_path=str(missing)),
        ),
    )
    with pytest.raises(ModelLoadError, match=str(missing)):
        run_stage("register", broken)

    corrupt = tmp_path / "models/corrupt"
    shutil.copytree(params.adrpo.output_dir, corrupt)
    (corrupt / "model.safetensors").unlink()
    broken = replace(
        params,
        adrpo=replace(params.adrpo, output_dir=str(corrupt)),
        eval_dialogue=replace(params.eval_dialogue, writers=(str(corrupt),)),
    )
    with pytest.raises(ModelLoadError, match=rf"{corrupt}: no model weights"):
        run_stage("register", broken)
    client = client_for(params)
    assert client.search_registered_models() == []
    assert not Path(params.register.report_path).exists()


def test_bad_evaluation_inputs_are_named(params: Params) -> None:
    from components.stages.register import memagent_registration, membuilder_registration

    report = Path(params.eval_dialogue.report_path)
    report.write_text(json.dumps({"score": {"f1": 0.25}}), encoding="utf-8")
    with pytest.raises(InputError, match=rf"{report}.*score/containment"):
        membuilder_registration(params)

    other = replace(params, eval_dialogue=replace(params.eval_dialogue, writers=("models/sft",)))
    with pytest.raises(ConfigError, match=r"eval_dialogue.writers\[0\] \(models/sft\) is not adrpo.output_dir"):
        membuilder_registration(other)

    needle = Path(params.longcontext.output_dir) / "needle_eval.jsonl"
    needle.unlink()
    with pytest.raises(InputError, match=rf"{needle}: evaluation set file not found"):
        memagent_registration(params)


def test_eval_set_digest_follows_files_and_selection(tmp_path: Path) -> None:
    from components.model_registry.register import eval_set_digest

    data = tmp_path / "eval.jsonl"
    data.write_text("a\n", encoding="utf-8")
    first = eval_set_digest([data], {"max_questions": 10})
    assert eval_set_digest([data], {"max_questions": 10}) == first
    assert eval_set_digest([data], {"max_questions": 5}) != first
    data.write_text("b\n", encoding="utf-8")
    assert eval_set_digest([data], {"max_questions": 10}) != first


def test_unreachable_registry_names_its_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.model_registry.client import check_registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ModelLoadError, match=rf"the model registry: the MLflow registry at {uri} failed"):
        check_registry(MlflowClient(tracking_uri=uri))
