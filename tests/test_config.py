"""Typed configuration: strict loading, every profile instantiates, params.yaml is the rendered defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from components.config import (
    Params,
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

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    assert params.model.name_or_path == "Qwen/Qwen3-4B"
    assert params.memagent.train.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct"
    assert (params.memagent.reader.chunk_tokens, params.memagent.reader.memory_tokens) == (5000, 1024)
    assert params.adrpo.num_generations == 8 and params.adrpo.bf16
    assert params.longcontext.eval_questions == 128
    assert params.longcontext.eval_lengths_docs[-1] == 25600
    # untouched sections keep the defaults
    assert params.ingest == Params().ingest


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
        ("ingest:\n  quality:\n    critical: [unique_ids, made_up]\n", "unknown expectation(s) made_up"),
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
