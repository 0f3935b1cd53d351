"""ADRPO on TRL's GRPOTrainer: the hook guard, two real training steps with a tiny model, the advantage rewrite.

The prompts are the two hand-built sessions of ``tests/helpers.py`` (A, B; rows as synth_qa's ``join_prompts`` writes
them). A random tiny model writes unparseable memory operations, so every reward would be 0 and no parameter
would move; the ``scripted_rollouts`` shim therefore swaps each generated completion, AT SCORING TIME ONLY, for the
hand-written rollout of ``tests/helpers.py`` with the same (session, part, rollout index). Generation, TRL's reward
call, ``groups_from_batch``, ``score_groups`` (real banks, real containment judge), the advantage rewrite and the
policy-gradient step on the generated tokens are all real; the rewards and weights are the hand-computed
``EXPECTED_REWARDS`` / ``RETRIEVAL_WEIGHTS`` of ``tests/helpers.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from components.config import ADRPOConfig
from components.errors import ConfigError, MemforgeError
from components.llm.model_assets import MODEL_CARD_FILE, read_model_card
from components.memory.embedder import EmbeddingCache, HashingEmbedder
from components.memory.types import PARTS
from components.rewards import DEFAULT_EPS, completion_text
from components.training import adrpo
from components.training.adrpo_trainer import ADRPOTrainer, check_trl_hook
from components.training.arguments import shared_arguments
from components.training.checkpoints import FINGERPRINT_FILE, latest_checkpoint
from tests.helpers import (
    EXPECTED_REWARDS,
    MEMORY,
    RETRIEVAL_WEIGHTS,
    ROLLOUTS_A,
    ROLLOUTS_B,
    count_tokens,
    session_prompt_rows,
)

ROLLOUTS = {"c1:s1": ROLLOUTS_A, "c1:s2": ROLLOUTS_B}
SQRT_HALF = 1 / math.sqrt(2)


def prompt_rows() -> list[dict]:
    rows = session_prompt_rows(EmbeddingCache(HashingEmbedder()))
    return [rows[sid, part] for sid in ("s1", "s2") for part in PARTS]


def adrpo_cfg(model_dir: Path, tmp: Path, **overrides) -> ADRPOConfig:
    base = dict(
        model_name_or_path=str(model_dir),
        num_generations=2,
        learning_rate=5e-2,
        max_completion_length=8,
        max_prompt_length=512,
        max_steps=2,
        save_steps=0,
        seed=0,
        checkpoint_dir=str(tmp / "checkpoints"),
    )
    return ADRPOConfig(**{**base, **overrides})


@pytest.fixture
def scripted_rollouts(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Score the hand-written rollouts in place of the tiny model's text; records the generated texts."""
    real = adrpo.groups_from_batch
    generated: list[list[str]] = []

    def shim(rows, completions, **kwargs):
        seen: dict[tuple[str, str], int] = {}
        scripted = []
        for row in rows:
            key = (f"{row['conversation_id']}:{row['session_id']}", row["part"])
            r = seen[key] = seen.get(key, -1) + 1
            scripted.append(ROLLOUTS[key[0]][key[1]][r])
        generated.append([completion_text(c) for c in completions])
        return real(rows, scripted, **kwargs)

    monkeypatch.setattr(adrpo, "groups_from_batch", shim)
    return generated


# ---------------------------------------------------------------------------------------------
# hook guard


def test_hook_guard_passes_on_installed_trl_and_fails_clearly_without_the_hook() -> None:
    from trl import GRPOTrainer

    check_trl_hook()
    check_trl_hook(ADRPOTrainer)

    class NoHook(GRPOTrainer):
        _generate_and_score_completions = None

    with pytest.raises(MemforgeError, match="_generate_and_score_completions"):
        check_trl_hook(NoHook)

    class NoAdvantages(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            return {"completion_ids": None}

    with pytest.raises(MemforgeError, match="advantages"):
        check_trl_hook(NoAdvantages)

    class WrongSignature(GRPOTrainer):
        def _generate_and_score_completions(self, batch, extra):
            return {"advantages": None}

    with pytest.raises(MemforgeError, match="signature"):
        check_trl_hook(WrongSignature)


def test_order_by_session_keeps_sessions_whole_and_drops_incomplete() -> None:
    rows = prompt_rows()
    shuffled = [rows[i] for i in (5, 0, 7, 2, 1, 6, 3)]  # s1 complete (0-3), s2 lacks its core row (4)
    ordered, dropped = adrpo.order_by_session(shuffled)
    assert dropped == 1
    assert [r["part"] for r in ordered] == list(PARTS)
    assert {r["session_id"] for r in ordered} == {"s1"}
    ordered, dropped = adrpo.order_by_session(rows, seed=3)
    assert dropped == 0 and len(ordered) == 8
    assert [r["part"] for r in ordered] == list(PARTS) * 2
    assert adrpo.adrpo_batch_size(2, 1) == 8 and adrpo.adrpo_batch_size(4, 2) == 32
    with pytest.raises(ConfigError, match=r"num_generations: must be >= 2, got 1"):
        ADRPOConfig(num_generations=1)  # the config refuses a group TRL could not compare within
    with pytest.raises(ConfigError, match=r"sessions_per_batch: must be >= 1, got 0"):
        ADRPOConfig(sessions_per_batch=0)


# ---------------------------------------------------------------------------------------------
# training


def _params(model) -> dict[str, np.ndarray]:
    return {name: p.detach().cpu().float().numpy().copy() for name, p in model.named_parameters()}


def test_advantage_rewrite_replaces_trl_advantages(tiny_model_dir: Path, scripted_rollouts, tmp_path: Path) -> None:
    from datasets import Dataset

    from components.llm.model_assets import load_model_folder, normalise_tokenizer
    from components.rewards import make_judge, rewrite_advantages

    cfg = adrpo_cfg(tiny_model_dir, tmp_path, max_steps=1)
    model, tokenizer = load_model_folder(tiny_model_dir, "float32")
    normalise_tokenizer(model, tokenizer)
    tokenizer.padding_side = "left"
    before = _params(model)
    ordered, _ = adrpo.order_by_session(prompt_rows())  # s1 first: step 1 scores session A
    reward = adrpo.ADRPOReward(cfg, make_judge(cfg), count_tokens, MEMORY)
    trainer = ADRPOTrainer(
        model=model,
        args=adrpo.grpo_args(cfg),
        train_dataset=Dataset.from_list(ordered),
        processing_class=tokenizer,
        adrpo_reward=reward,
    )
    trainer.train()
    last = trainer.adrpo_last
    assert reward.calls == 1 and last["scores"].judge_calls == 1  # one score_groups (one judge call) per step
    # rows in batch order: each prompt twice in a row (G=2), session A's four parts in PARTS order
    expected_rewards = [EXPECTED_REWARDS["c1:s1", p][r] for p in PARTS for r in range(2)]
    np.testing.assert_allclose(last["rewards"], expected_rewards, atol=1e-12)
    weights = [RETRIEVAL_WEIGHTS["c1:s1"][p] for p in PARTS for _ in range(2)]
    np.testing.assert_array_equal(last["weights"], weights)
    np.testing.assert_allclose(
        last["advantages"], rewrite_advantages(last["rewards"], last["group_ids"], last["weights"]), atol=1e-12
    )
    # by hand, G=2 with rewards (a, b): mean (a+b)/2, sample std |a-b|/sqrt(2), so
    # A' = w * (+-(a-b)/2) / (|a-b|/sqrt(2) + eps) ~= +-w/sqrt(2); e.g. semantic (1.0, 0.1), w = 4: +-2.828
    hand = []
    for part in PARTS:
        a, b = EXPECTED_REWARDS["c1:s1", part]
        w = RETRIEVAL_WEIGHTS["c1:s1"][part]
        half = (a - b) / 2
        hand += [w * half / (abs(a - b) * SQRT_HALF + DEFAULT_EPS), -w * half / (abs(a - b) * SQRT_HALF + DEFAULT_EPS)]
    np.testing.assert_allclose(last["advantages"], hand, atol=1e-9)
    np.testing.assert_allclose(last["advantages"], np.array(weights) * np.tile([1, -1], 4) * SQRT_HALF, atol=1e-3)
    # TRL's own advantages (unweighted) differ exactly where the weight is not 1 (semantic: w = 4)
    np.testing.assert_allclose(last["trl_advantages"], np.tile([1, -1], 4) * SQRT_HALF, atol=1e-3)
    assert not np.allclose(last["trl_advantages"], last["advantages"])
    np.testing.assert_allclose(list(trainer._logs["advantages"])[-8:], last["advantages"])  # completions table
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"adrpo/reward_mean", "adrpo/attribution_weight_mean_semantic", "adrpo/format_failure_rate"} <= logged
    assert any(k.startswith("rewards/adrpo/") for k in logged)  # TRL logs the ADRPO reward function
    after = _params(trainer.model)
    assert any(not np.allclose(before[n], after[n]) for n in before)


def test_train_adrpo_two_steps_logs_and_changes_parameters(
    tiny_model_dir: Path, scripted_rollouts, tmp_path: Path
) -> None:
    from datasets import Dataset

    from components.llm.model_assets import load_model_folder

    cfg = adrpo_cfg(tiny_model_dir, tmp_path)
    logs: list[tuple[dict, int]] = []
    outcome = adrpo.train_adrpo(
        cfg, Dataset.from_list(prompt_rows()), tmp_path / "adrpo", MEMORY, on_log=lambda d, s: logs.append((d, s))
    )
    assert outcome.steps == 2 and outcome.sessions == 2 and outcome.prompts == 8
    assert math.isfinite(outcome.train_loss)
    assert len(scripted_rollouts) == 2 and all(len(batch) == 8 for batch in scripted_rollouts)
    step_logs = [d for d, _ in logs if "adrpo/reward_mean" in d]
    assert len(step_logs) == 2
    for d in step_logs:
        assert d["adrpo/judge_calls"] == 1.0 and d["adrpo/groups"] == 1.0
        assert {f"adrpo/reward_mean_{p}" for p in PARTS} <= set(d)
        assert {f"adrpo/attribution_weight_mean_{p}" for p in PARTS} <= set(d)
        assert "adrpo/length_penalty_mean" in d and "adrpo/format_failure_rate" in d
    assert outcome.last_stats["judge_calls"] == 1.0 and outcome.resumed_from is None
    base, _ = load_model_folder(tiny_model_dir, "float32")
    trained, _ = load_model_folder(tmp_path / "adrpo", "float32")
    before, after = _params(base), _params(trained)
    assert before.keys() == after.keys()
    assert any(not np.allclose(before[n], after[n]) for n in before)
    assert outcome.metrics()["steps"] == 2.0
    assert [p["step"] for p in outcome.reward_history()] == [1, 2]
    # the last step's completions, one row each, with the reward the trainer used
    rows = outcome.completions
    assert len(rows) == 8 and {r["step"] for r in rows} == {2}
    assert [(r["part"], r["rollout"]) for r in rows] == [(p, i) for p in PARTS for i in range(2)]
    assert [r["completion"] for r in rows] == scripted_rollouts[-1]  # the model's own text, not the scripted one
    failing = {("c1:s1", "core", 1), ("c1:s1", "episodic", 1), ("c1:s2", "semantic", 1)}  # see ROLLOUTS_A/B
    assert [not r["format_ok"] for r in rows] == [(r["session"], r["part"], r["rollout"]) in failing for r in rows]
    for r in rows:  # reward = gate x task x (1 - lambda x length penalty), lambda = 0.8
        assert r["reward"] == pytest.approx(r["format_ok"] * r["task_reward"] * (1 - 0.8 * r["length_penalty"]))
    card = json.loads((tmp_path / "adrpo" / MODEL_CARD_FILE).read_text())
    assert card["kind"] == "adrpo" and card["adrpo"]["steps"] == 2 and card["parameter_count"] == outcome.total_params
    assert read_model_card(tmp_path / "adrpo").parameter_count == outcome.total_params
    assert not list((tmp_path / "adrpo").glob("checkpoint-*")) and latest_checkpoint(cfg.checkpoint_dir) is None


def test_real_tiny_model_completions_fail_the_format_gate(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Unscripted: a random model's text never parses, so every reward and every ADRPO advantage is 0."""
    from datasets import Dataset

    logs: list[dict] = []
    outcome = adrpo.train_adrpo(
        adrpo_cfg(tiny_model_dir, tmp_path, max_steps=1),
        Dataset.from_list(prompt_rows()),
        tmp_path / "adrpo",
        MEMORY,
        on_log=lambda d, s: logs.append(d),
    )
    assert outcome.steps == 1
    assert outcome.last_stats["format_failure_rate"] == 1.0 and outcome.last_stats["reward_mean"] == 0.0
    assert outcome.last_stats["advantage_abs_mean"] == 0.0


def test_checkpoint_and_resume(tiny_model_dir: Path, scripted_rollouts, tmp_path: Path) -> None:
    from datasets import Dataset

    data = Dataset.from_list(prompt_rows())
    out = tmp_path / "adrpo"
    cfg = adrpo_cfg(tiny_model_dir, tmp_path, max_steps=1, save_steps=1)
    first = adrpo.train_adrpo(cfg, data, out, MEMORY)
    checkpoints = Path(cfg.checkpoint_dir)
    assert first.steps == 1 and latest_checkpoint(checkpoints).endswith("checkpoint-1")
    assert (checkpoints / FINGERPRINT_FILE).is_file() and not list(out.glob("checkpoint-*"))
    second = adrpo.train_adrpo(replace(cfg, max_steps=2), data, out, MEMORY)
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-1")
    assert second.steps == 2 and second.metrics()["resumed"] == 1.0
    assert len(scripted_rollouts) == 2  # the resumed run generated only its one remaining step
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-2"]  # only the latest is kept


def test_checkpoints_of_other_settings_or_policy_are_not_resumed(
    tiny_model_dir: Path, scripted_rollouts, tmp_path: Path
) -> None:
    import shutil

    from datasets import Dataset

    from components.llm.tiny import build_tiny_model

    data = Dataset.from_list(prompt_rows())
    policy = Path(shutil.copytree(tiny_model_dir, tmp_path / "policy"))
    cfg = adrpo_cfg(policy, tmp_path, max_steps=1, save_steps=1)
    adrpo.train_adrpo(cfg, data, tmp_path / "adrpo", MEMORY)
    changed = adrpo.train_adrpo(replace(cfg, learning_rate=1e-3), data, tmp_path / "adrpo", MEMORY)
    assert changed.resumed_from is None and changed.steps == 1  # other settings: trained afresh, not resumed
    build_tiny_model(policy, seed=1)  # the starting policy changed in place (e.g. a new sft model)
    retrained = adrpo.train_adrpo(replace(cfg, learning_rate=1e-3), data, tmp_path / "adrpo", MEMORY)
    assert retrained.resumed_from is None and len(scripted_rollouts) == 3
    with pytest.raises(MemforgeError, match="must not lie inside the model folder"):
        adrpo.train_adrpo(replace(cfg, checkpoint_dir=str(tmp_path / "adrpo" / "ckpt")), data, tmp_path / "adrpo")


def test_grpo_args_come_from_the_shared_builder_plus_adrpo_fields(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    cfg = adrpo_cfg(tiny_model_dir, tmp_path, sessions_per_batch=2, save_steps=3, seed=7, num_generations=4, bf16=True)
    args = adrpo.grpo_args(cfg)
    cuda = torch.cuda.is_available()
    # the shared settings, exactly as the one builder makes them for every trainer
    shared = shared_arguments(
        output_dir=cfg.checkpoint_dir, seed=7, bf16=True, logging_steps=1, save_steps=3, cuda=cuda
    )
    assert {key: getattr(args, key) for key in shared} == {**shared, "report_to": []}  # TRL reads "none" as []
    assert args.output_dir == cfg.checkpoint_dir and args.save_strategy == "steps" and args.save_steps == 3
    assert args.save_total_limit == 1 and args.seed == 7 and args.data_seed == 7
    assert args.bf16 is cuda and args.use_cpu is not cuda  # bf16 asked for: only on a GPU
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    # GRPO's own fields from the config, ADRPO's batching
    assert (args.num_generations, args.beta, args.epsilon, args.loss_type) == (4, 0.0, 0.2, "dapo")
    assert (args.temperature, args.top_p, args.max_steps, args.learning_rate) == (1.0, 1.0, 2, 5e-2)
    assert args.max_completion_length == 8 and args.per_device_train_batch_size == 32  # 4 agents x 2 sessions x G
    assert args.generation_batch_size == 32 and args.steps_per_generation == 1 and args.num_iterations == 1
    assert not args.shuffle_dataset and not args.use_vllm and not args.log_completions
    assert adrpo.grpo_args(replace(cfg, save_steps=0)).save_strategy == "no"
    assert adrpo.grpo_args(replace(cfg, loss_type="grpo")).loss_type == "grpo"
    if not cuda:
        with pytest.raises(MemforgeError, match=r"adrpo\.use_vllm needs a CUDA GPU"):
            adrpo.grpo_args(replace(cfg, use_vllm=True))


# ---------------------------------------------------------------------------------------------
# prompt truncation (TRL 1.16 does not truncate GRPO prompts)

CUT_LIMIT = 1500  # tiny-tokenizer tokens (747-token vocabulary): the long session is over it, the short one under


def _agent_prompt_rows() -> list[dict]:
    """The episodic agent's prompt on an 80-turn session and on a 2-turn one, as synth_qa rows carry them."""
    from components.dialogue.schema import Session, Turn
    from components.memory.prompts import agent_messages

    turns = tuple(
        Turn(f"S1:{i}", "Ann" if i % 2 else "Bo", f"Turn {i}: I went to the market in Lisbon and bought {i} pears.")
        for i in range(1, 81)
    )
    sessions = [Session("S1", "2023-05-07T10:00", turns), Session("S2", "2023-05-08T10:00", turns[:2])]
    return [
        {
            "prompt_id": f"c1:{s.session_id}:episodic",
            "part": "episodic",
            "prompt": agent_messages("episodic", s, "", []),
        }
        for s in sessions
    ]


def _generation_tokens(tokenizer, messages) -> int:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    return len(encoded["input_ids"])


def test_over_long_prompts_lose_the_middle_of_the_transcript_and_are_counted(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from components.training.sft import CUT_MARKER

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _agent_prompt_rows()
    assert (
        _generation_tokens(tokenizer, rows[0]["prompt"]) > CUT_LIMIT >= _generation_tokens(tokenizer, rows[1]["prompt"])
    )
    fitted, report = adrpo.fit_prompts(rows, tokenizer, CUT_LIMIT)
    assert (report.shortened, report.fitted, report.over_length) == (1, 1, 0)
    cut = fitted[0]["prompt"]
    assert cut[0] == rows[0]["prompt"][0]  # the system prompt, whole
    user = cut[1]["content"]
    assert user.startswith("Session S1, date 2023-05-07T10:00 (Sunday).")  # the session header
    assert user.endswith("Write the episodic memory operations for this session as JSON.")  # the instruction
    assert "[S1:80] Bo: Turn 80:" in user and "[S1:79] Ann: Turn 79:" in user  # the newest turns
    assert "[S1:40] " not in user and CUT_MARKER in user  # the middle of the transcript is gone
    assert _generation_tokens(tokenizer, cut) == report.max_tokens_after <= CUT_LIMIT < report.max_tokens_before
    assert {k: v for k, v in fitted[0].items() if k != "prompt"} == {k: v for k, v in rows[0].items() if k != "prompt"}
    assert fitted[1] == rows[1]  # a prompt under the limit is untouched


def test_a_prompt_that_cannot_fit_is_left_whole_counted_and_warned(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _agent_prompt_rows()
    with caplog.at_level(logging.WARNING, logger=adrpo.__name__):
        fitted, report = adrpo.fit_prompts(rows, tokenizer, 40)  # below even the system prompt
    assert report.over_length == 2 and report.shortened == 0 and fitted == rows
    assert "2 prompt(s) stay longer than max_prompt_length=40" in caplog.text


# ---------------------------------------------------------------------------------------------
# the real prompts dataset (ingest -> expert -> synth_qa on a small corpus)


REAL_PROMPT_LIMIT = 1100  # tiny-tokenizer tokens: some of the first two sessions' agent prompts (up to 1187) are over


def test_real_prompts_dataset_is_session_grouped_and_trains(
    trained_inputs,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """synth_qa's prompts: four consecutive rows per session; one step with the EXPERT's outputs as rollouts."""
    from datasets import load_from_disk

    from components.datasets import synth_qa as qa_dataset

    qa_dataset.synth_qa(trained_inputs)
    prompts = load_from_disk(str(Path(trained_inputs.synth_qa.output_dir) / "prompts"))
    rows = prompts.to_list()
    keys = [(r["conversation_id"], r["session_id"]) for r in rows]
    assert all(len(set(keys[i : i + 4])) == 1 for i in range(0, len(keys), 4))
    assert all({r["part"] for r in rows[i : i + 4]} == set(PARTS) for i in range(0, len(rows), 4))
    ordered, dropped = adrpo.order_by_session(rows)
    assert dropped == 0 and len(ordered) == len(rows)

    real = adrpo.groups_from_batch
    monkeypatch.setattr(
        adrpo, "groups_from_batch", lambda rs, cs, **kw: real(rs, [r["expert_output"] for r in rs], **kw)
    )
    outcome = adrpo.train_adrpo(
        adrpo_cfg(tiny_model_dir, tmp_path, max_steps=1, max_prompt_length=REAL_PROMPT_LIMIT),
        prompts.select(range(8)),
        tmp_path / "adrpo",
        trained_inputs.memory,
    )
    assert outcome.steps == 1 and outcome.sessions == 2
    metrics = outcome.metrics()  # the adrpo stage's metrics: reports/adrpo.json and its MLflow run
    assert metrics["prompts_truncated"] == outcome.prompt_fit.shortened > 0 and metrics["prompts_over_length"] == 0
    assert metrics["prompt_tokens_max"] <= REAL_PROMPT_LIMIT
    assert outcome.last_stats["format_failure_rate"] == 0.0  # the expert's operations apply to its own banks
