"""Typed configuration: strict loading, every profile instantiates, params.yaml is the rendered defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_args

import pytest

from components.config import (
    PROFILES_DIR,
    ConfigValueError,
    EvalSet,
    LongContextConfig,
    MemoryConfig,
    NeedleTask,
    Params,
    ReaderConfig,
    SplitName,
    apply_profile,
    build_dataclass,
    list_profiles,
    load_params,
    parse_override,
    profile_params,
    render_params,
    to_dict,
)
from components.errors import ConfigError
from tests.helpers import REPO_ROOT


def _all_fields_have_help(cls: type) -> list[str]:
    missing = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help"):
            missing.append(f"{cls.__name__}.{f.name}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            missing += _all_fields_have_help(type(default))
        if isinstance(default, tuple) and default and dataclasses.is_dataclass(default[0]):
            missing += _all_fields_have_help(type(default[0]))
    return missing


def test_every_field_has_help_text() -> None:
    assert _all_fields_have_help(Params) == []


@pytest.mark.parametrize("profile", list_profiles())
def test_every_profile_loads_and_round_trips(profile: str, tmp_path: Path) -> None:
    params = profile_params(profile)
    assert isinstance(params, Params)
    written = tmp_path / "params.yaml"
    apply_profile(profile, written)
    assert load_params(written) == params


def test_paper_profile_holds_the_papers_models() -> None:
    params = profile_params("paper-gpu")
    assert params.model.name_or_path == "Qwen/Qwen3-4B-Instruct-2507"
    assert params.memagent.train.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct"
    assert (params.memagent.reader.chunk_tokens, params.memagent.reader.memory_tokens) == (5000, 1024)
    assert params.adrpo.num_generations == 8 and params.adrpo.bf16
    # the published rollout sampling, KL and SFT recipe (MemBuilder's reference scripts)
    assert (params.adrpo.temperature, params.adrpo.top_p, params.adrpo.beta) == (0.8, 0.9, 0.02)
    sft = params.sft
    assert (sft.learning_rate, sft.epochs, sft.lr_scheduler, sft.warmup_ratio, sft.max_grad_norm) == (
        5e-7,
        10,
        "cosine",
        0.1,
        0.1,
    )
    assert params.longcontext.eval_questions == 128
    assert params.longcontext.eval_lengths_docs[-1] == 25600
    # untouched sections keep the defaults
    assert params.ingest == Params().ingest


SOURCE_TAG = re.compile(r"#\s+\[([\w-]+)\]")
LEAF = re.compile(r"^\s*[a-z_0-9]+:\s*[^\s#]")


@pytest.mark.parametrize("profile", [name for name in list_profiles() if name != "default"])
def test_every_profile_value_names_its_source(profile: str) -> None:
    """Each value set by a profile carries a ``# [TAG]`` comment, and every tag is explained in its header."""
    lines = (PROFILES_DIR / f"{profile}.yaml").read_text(encoding="utf-8").splitlines()
    legend = {match.group(1) for line in lines if (match := SOURCE_TAG.match(line))}
    unsourced = [line for line in lines if LEAF.match(line) and not SOURCE_TAG.search(line)]
    assert unsourced == [], f"{profile}: values without a source comment"
    used = {tag for line in lines if LEAF.match(line) for tag in SOURCE_TAG.findall(line)}
    assert used <= legend, f"{profile}: tags not explained in the header: {sorted(used - legend)}"


def test_committed_params_yaml_is_the_rendered_defaults() -> None:
    """params.yaml is generated: a change to a default must show up in review as a params.yaml diff."""
    committed = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    assert committed == render_params(Params(), header="default")


def test_configs_are_frozen() -> None:
    params = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.model.dtype = "bfloat16"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("ingest:\n  sourcs: []\n", "unknown key 'ingest.sourcs' (did you mean 'sources'?)"),
        ("modle:\n  dtype: float32\n", "unknown key 'modle' (did you mean 'model'?)"),
        ("ingest:\n  splits:\n    seed: three\n", "ingest.splits.seed: expected an integer, got str 'three'"),
        ("model:\n  dtype: float64\n", "model.dtype: 'float64' is not one of"),
        ("ingest:\n  splits:\n    sft: 0.9\n", "sum to 1"),
        (
            "ingest:\n  quality:\n    critical: [unique_ids, made_up]\n",
            "ingest.quality.critical[1]: 'made_up' is not one of 'unique_ids', 'session_has_turns'",
        ),
        ("ingest:\n  sources:\n    - format: csv\n      path: x\n", "ingest.sources[0].format: 'csv' is not one of"),
        ("adrpo:\n  use_vllm: 'yes'\n", "adrpo.use_vllm: expected true or false"),
        ("model: [1, 2]\n", "model: expected a mapping"),
        ("model: {dtype: float32\n", "malformed YAML"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    file = tmp_path / "params.yaml"
    file.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_params(file)
    assert message in str(excinfo.value)
    assert str(file) in str(excinfo.value)


def test_partial_params_fill_defaults_and_ints_widen_to_floats(tmp_path: Path) -> None:
    file = tmp_path / "params.yaml"
    file.write_text("adrpo:\n  learning_rate: 1\n", encoding="utf-8")
    params = load_params(file)
    assert params.adrpo.learning_rate == 1.0 and isinstance(params.adrpo.learning_rate, float)
    assert params.model == Params().model


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    file = tmp_path / "params.yaml"
    file.write_text(render_params(Params()), encoding="utf-8")
    key, value = parse_override("ingest.splits.seed=99")
    assert load_params(file, {key: value}).ingest.splits.seed == 99
    with pytest.raises(ConfigError, match=r"unknown key 'ingest\.splits\.sed'"):
        load_params(file, {"ingest.splits.sed": 1})
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("ingest.splits.seed")


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="paper-gpu"):
        profile_params("nope")


def test_to_dict_round_trips_through_build() -> None:
    params = profile_params("paper-gpu")
    assert build_dataclass(Params, to_dict(params)) == params


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    file = tmp_path / "params.yaml"
    file.write_text(render_params(Params()), encoding="utf-8")
    return file


@pytest.mark.parametrize(
    ("override", "value", "named"),
    [
        # issue 12 item 7's examples
        ("memory.top_k", -3, "memory.top_k: must be >= 1"),
        ("sft.max_steps", -7, "sft.max_steps: must be -1 (run the epochs) or >= 1"),
        ("adrpo.num_generations", 0, "adrpo.num_generations"),
        # one or more per section
        ("model.max_context_tokens", 0, "model.max_context_tokens"),
        ("ingest.sources", [], "ingest.sources: must list at least one value"),
        ("ingest.splits.sft", -0.2, "ingest.splits.sft: must be in [0, 1]"),
        ("ingest.splits.sft", 0.9, "ingest.splits: sft + rl + eval must sum to 1"),
        ("ingest.synthetic.sessions_per_conversation", 0, "ingest.synthetic.sessions_per_conversation"),
        ("ingest.synthetic.seed", -1, "ingest.synthetic.seed: must be in [0, 4294967295]"),
        ("memory.core_compress_to_chars", 6000, "memory.core_compress_to_chars: must be below core_max_chars"),
        ("memory.embed_batch_size", 0, "memory.embed_batch_size"),
        ("backends.teacher.temperature", -0.5, "backends.teacher.temperature: must be >= 0"),
        ("backends.judge.top_p", 0, "backends.judge.top_p: must be in (0, 1]"),
        ("backends.answerer.kind", "openai", "backends.answerer.base_url: required for kind 'openai'"),
        ("backends.answerer.max_concurrency", 0, "backends.answerer.max_concurrency"),
        ("backends.answerer.timeout_seconds", 0, "backends.answerer.timeout_seconds: must be > 0"),
        ("expert.max_conversations", -1, "expert.max_conversations: must be >= 0"),
        ("expert.splits", ["sft", "test"], "expert.splits[1]: 'test' is not one of"),
        ("expert.splits", ["sft", "sft"], "expert.splits: must not repeat a value"),
        ("synth_qa.min_usable_fraction", 1.5, "synth_qa.min_usable_fraction: must be in [0, 1]"),
        ("synth_qa.support_similarity", 2.0, "synth_qa.support_similarity: must be in [-1, 1]"),
        ("synth_qa.max_answer_words", 0, "synth_qa.max_answer_words: must be >= 1"),
        ("synth_qa.type_mix.temporal", 0.5, "synth_qa.type_mix: single_session + multi_session + temporal must sum"),
        ("sft.learning_rate", 0, "sft.learning_rate: must be > 0"),
        ("sft.warmup_ratio", 1.0, "sft.warmup_ratio: must be in [0, 1)"),
        ("sft.max_grad_norm", 0, "sft.max_grad_norm: must be > 0"),
        ("sft.splits", [], "sft.splits: must list at least one value"),
        ("longcontext.needle_tasks", ["single", "haystack"], "longcontext.needle_tasks[1]: 'haystack' is not one of"),
        ("longcontext.length_tolerance", 1.5, "longcontext.length_tolerance: must be in (0, 1)"),
        ("longcontext.eval_lengths_docs", [10, 10], "longcontext.eval_lengths_docs: must not repeat a value"),
        ("longcontext.squad_eval_lengths_docs", [0, 5], "longcontext.squad_eval_lengths_docs: every value"),
        ("longcontext.squad_eval_questions", -1, "longcontext.squad_eval_questions: must be >= 0"),
        ("longcontext.train_docs", 0, "longcontext.train_docs: must be >= 1"),
        ("memagent.reader.chunk_tokens", 0, "memagent.reader.chunk_tokens: must be >= 1"),
        ("memagent.eval.tasks", ["hotpotqa", "ruler"], "memagent.eval.tasks[1]: 'ruler' is not one of"),
        ("memagent.eval.tasks", [], "memagent.eval.tasks: must list at least one value"),
        ("memagent.eval.max_samples", -1, "memagent.eval.max_samples"),
        ("pipeline.retries", -1, "pipeline.retries: must be >= 0"),
    ],
)
def test_out_of_range_values_are_refused_at_load_naming_the_key(
    params_file: Path, override: str, value: Any, named: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_params(params_file, {override: value})
    assert str(excinfo.value).startswith(f"{params_file}: {named}")


@pytest.mark.parametrize(
    "overrides",
    [
        {"sft.max_steps": -1},
        {"backends.teacher.top_p": 1, "backends.teacher.temperature": 0},
        {"expert.max_conversations": 0},
        {"ingest.splits.sft": 1, "ingest.splits.rl": 0, "ingest.splits.eval": 0},
        {"longcontext.needle_tasks": [], "longcontext.eval_questions": 0},
        {"memory.core_compress_to_chars": 2},
    ],
)
def test_range_boundaries_are_accepted(params_file: Path, overrides: dict[str, Any]) -> None:
    params = load_params(params_file, overrides)
    for dotted, value in overrides.items():
        loaded: Any = params
        for part in dotted.split("."):
            loaded = getattr(loaded, part)
        assert to_dict(loaded) == value


def test_sections_check_themselves_however_built() -> None:
    """Direct construction and ``dataclasses.replace`` run the same checks; outside a load the key is the field's."""
    with pytest.raises(ConfigValueError, match=r"^top_k: must be >= 1, got 0$") as excinfo:
        MemoryConfig(top_k=0)
    assert (excinfo.value.key, excinfo.value.reason) == ("top_k", "must be >= 1, got 0")
    with pytest.raises(ConfigError, match=r"^chunk_tokens: must be >= 1"):
        dataclasses.replace(ReaderConfig(), chunk_tokens=0)
    with pytest.raises(ConfigError, match=r"^LongContextConfig\.length_tolerance: must be in \(0, 1\)"):
        build_dataclass(LongContextConfig, {"length_tolerance": 0})
    with pytest.raises(ConfigError, match=r"^longcontext\.needle_lengths_tokens: every value must be >= 1"):
        build_dataclass(LongContextConfig, {"needle_lengths_tokens": [0]}, "longcontext")


def test_name_types_match_the_code_that_uses_them() -> None:
    """The ``Literal`` names a config admits are the ones the splitter, the needle builder and the evaluation know."""
    from components.dialogue.splits import SPLIT_NAMES
    from components.longcontext.build import EVAL_SET_FILES as SET_FILES
    from components.longcontext.needle import TASK_SHAPES

    assert get_args(SplitName) == SPLIT_NAMES
    assert set(get_args(NeedleTask)) == set(TASK_SHAPES)
    assert set(get_args(EvalSet)) == set(SET_FILES)


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(tmp_path: Path) -> None:
    key = "sk-proj-0123456789abcdefXYZ"
    params = tmp_path / "params.yaml"
    params.write_text(f"backends:\n  judge:\n    api_key_env: {key}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"backends\.judge\.api_key_env: must be the NAME of an environment") as err:
        load_params(params)
    assert key not in str(err.value)
    assert load_params(params, {"backends.judge.api_key_env": "OPENAI_API_KEY"}).backends.judge.api_key_env


def test_a_missing_params_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml: params file not found"):
        load_params(tmp_path / "absent.yaml")


def test_an_out_of_range_override_is_named_as_coming_from_the_command_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("memory:\n  top_k: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"memory\.top_k: must be >= 1, got -3 \(set on the command line: -S memory"):
        load_params(params, {"memory.top_k": -3})
    params.write_text("memory:\n  top_k: -3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as in_file:
        load_params(params)
    assert "command line" not in str(in_file.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "ingest.quality.max_quarantine_fraction=5.0",
            r"ingest\.quality\.max_quarantine_fraction: must be in \[0, 1\]",
        ),
        ("ingest.quality.batch_conversations=-1", r"ingest\.quality\.batch_conversations: must be >= 1"),
        ("ingest.quality.max_turns_per_session=0", r"ingest\.quality\.max_turns_per_session: must be >= 1"),
        ("ingest.quality.min_turn_chars=-1", r"ingest\.quality\.min_turn_chars: must be >= 0"),
    ],
)
def test_quality_sizes_and_fractions_are_range_checked(override: str, message: str, tmp_path: Path) -> None:
    from components.config import parse_override

    params = tmp_path / "params.yaml"
    params.write_text("{}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_params(params, dict([parse_override(override)]))
