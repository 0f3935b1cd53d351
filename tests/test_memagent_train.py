"""memagent_train: multi-conversation GRPO of the MemAgent reader on TRL's GRPOTrainer.

The pure pieces (group advantages, their broadcast to conversations, the reward) are checked on hand-computed
values. The training tests use a REAL tiny model that was first taught, by a few seconds of plain supervised
fine-tuning in ``boxed_model_dir``, to end every reply with ``\\boxed{paris}`` or ``\\boxed{london}``, about half each.
A random tiny model never writes a ``\\boxed{}`` answer, so every reward would be 0, every advantage 0 and no parameter
would move; this one, sampled at temperature 1, answers ``Paris`` in some trajectories of a group and not in others, so
the unmodified ``scoring.reward`` gives groups with different rewards. Generation, chunking, the reward, the
advantages and the policy update are all the real ones.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from components.agent.chunking import chunk_ids, token_stream, tokenizer_codec
from components.agent.prompts import answer_messages, update_messages
from components.agent.scoring import reward
from components.config import MemAgentTrainConfig, ReaderConfig
from components.errors import MemforgeError
from components.training import memagent, memagent_rollout
from components.training.arguments import shared_arguments
from components.training.checkpoints import latest_checkpoint
from components.training.memagent_rollout import TrainSample, broadcast_advantages, group_advantages
from components.training.memagent_trainer import MemAgentTrainer, check_trl_hook

READER = ReaderConfig(chunk_tokens=24, memory_tokens=12, answer_tokens=12)
DOCS = (
    "Alice moved to Paris in March and she works at a hospital there.",
    "Bob lives in Berlin with his sister and his dog.",
    "Carol likes coffee, music and long walks in the park on Sunday.",
)
ANSWERS = ("\\boxed{paris}", "\\boxed{london}")


def docs() -> list[str]:
    return list(DOCS)


SAMPLES = (
    TrainSample("alice-city", "Where does Alice live?", ("Paris",), docs),
    TrainSample("alice-move", "Which city did Alice move to?", ("Paris", "paris, france"), docs),
)


def train_cfg(model_dir: Path, tmp_path: Path, **overrides) -> MemAgentTrainConfig:
    base = dict(
        model_name_or_path=str(model_dir),
        num_generations=4,
        questions_per_step=1,
        learning_rate=1e-2,
        beta=1e-3,
        max_steps=2,
        save_steps=0,
        seed=0,
        log_trajectories=3,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        output_dir=str(tmp_path / "memagent"),
        report_path=str(tmp_path / "report.json"),
    )
    return MemAgentTrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The models here have tens of thousands of parameters: extra threads only contend with other processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def boxed_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after 70 AdamW steps on reader prompts whose replies are ``\\boxed{paris}`` / ``\\boxed{london}``
    in equal shares: a real policy that answers in the reward's format, right about half the time."""
    import torch

    from components.llm.model_assets import load_model_folder

    model, tokenizer = load_model_folder(tiny_model_dir, "float32")
    rng = random.Random(0)
    words = [*DOCS[0].lower().rstrip(".").split(" "), "bob", "berlin", "river"]

    def prompt(i: int) -> list[int]:
        memory = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        memory = rng.choice([memory, memory, rng.choice(ANSWERS), rng.choice(ANSWERS)[: rng.randint(2, 12)]])
        chunk = " ".join(rng.choice(words) for _ in range(20))
        question = SAMPLES[(i // 2) % 2].question  # each question sees both replies
        messages = answer_messages(question, memory) if i % 3 else update_messages(question, memory, chunk)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]

    replies = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in ANSWERS]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(70):
        rows = [(prompt(i), replies[i % 2]) for i in range(8)]
        width = max(len(p) + len(r) for p, r in rows)
        pad = [width - len(p) - len(r) for p, r in rows]
        ids = torch.tensor([[tokenizer.pad_token_id] * n + p + r for n, (p, r) in zip(pad, rows, strict=True)])
        mask = torch.tensor([[0] * n + [1] * (width - n) for n in pad])
        labels = torch.tensor([[-100] * (n + len(p)) + r for n, (p, r) in zip(pad, rows, strict=True)])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("boxed-model") / "model"
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _params(model) -> dict[str, np.ndarray]:
    return {name: p.detach().cpu().float().numpy().copy() for name, p in model.named_parameters()}


def _surrogate_gain(before, after, trajectories) -> float:
    """sum over conversation rows of advantage x (log p_after - log p_before)(completion): > 0 when the update
    followed the advantages (first order, Adam's first step moves every weight along its gradient's sign)."""
    import torch

    def logp(model, prompt: list[int], completion: list[int]) -> float:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        return float(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(completion)[:, None]).sum())

    return sum(
        t.advantage * (logp(after, p, c) - logp(before, p, c))
        for t in trajectories
        for p, c in zip(t.prompt_ids, t.completion_ids, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# pure pieces


def test_group_advantages_are_reward_minus_group_mean_by_hand() -> None:
    np.testing.assert_allclose(group_advantages([1, 0, 0, 1], [0, 0, 1, 1]), [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_allclose(group_advantages([1, 1, 0], ["q", "q", "q"]), [1 / 3, 1 / 3, -2 / 3])
    np.testing.assert_allclose(group_advantages([1, 1, 0, 0], [0, 0, 1, 1]), [0, 0, 0, 0])  # no std division: 0/0
    # groups need not be contiguous; an unscorable (NaN) reward leaves the mean and gets 0
    np.testing.assert_allclose(group_advantages([1, 0, math.nan, 0], ["a", "b", "a", "a"]), [0.5, 0, 0, -0.5])
    with pytest.raises(MemforgeError):
        group_advantages([1, 0], [0])


def test_broadcast_gives_every_conversation_of_a_trajectory_its_advantage() -> None:
    advantages = group_advantages([1, 0, 0, 1], [0, 0, 1, 1])
    rows = broadcast_advantages(advantages, [3, 2, 1, 4])
    np.testing.assert_allclose(rows, [0.5] * 3 + [-0.5] * 2 + [-0.5] + [0.5] * 4)
    assert broadcast_advantages([0.25], [0]).size == 0
    with pytest.raises(MemforgeError):
        broadcast_advantages([0.5, -0.5], [3])


def test_reward_function_scores_the_last_boxed_answer_against_the_row_answers() -> None:
    completions = [
        [{"role": "assistant", "content": "I think \\boxed{London}, no: \\boxed{the Paris}"}],
        "\\boxed{Paris}",
        "Paris",  # no box: 0
        [{"role": "assistant", "content": "\\boxed{Berlin}"}],
    ]
    answers = [["Paris"], ["paris", "France"], ["Paris"], ["Paris"]]
    assert memagent_rollout.boxed_em_reward([None] * 4, completions, answers) == [1.0, 1.0, 0.0, 0.0]


def test_train_sample_validation() -> None:
    sample = TrainSample("s", "Q?", ["a", "b"], docs)
    assert sample.answers == ("a", "b")
    assert TrainSample("s", "Q?", "a", docs).answers == ("a",)
    for bad in (dict(answers=()), dict(answers=("",)), dict(question=" "), dict(pieces=DOCS)):
        with pytest.raises(MemforgeError, match="sample 's'"):
            TrainSample(**{**dict(id="s", question="Q?", answers=("a",), pieces=docs), **bad})


def test_context_needed_bounds_every_conversation() -> None:
    reader = ReaderConfig(chunk_tokens=100, memory_tokens=20, answer_tokens=10)
    assert memagent.context_needed(50, 40, reader) == 50 + 100 + 2 * 20
    assert memagent.context_needed(50, 500, reader) == 500 + 20 + 10


# ---------------------------------------------------------------------------------------------
# the TRL hook guard


def test_hook_guard_passes_on_installed_trl_and_fails_clearly_without_the_hooks() -> None:
    from trl import GRPOTrainer

    check_trl_hook()
    check_trl_hook(MemAgentTrainer)

    class NoHook(GRPOTrainer):
        _generate_and_score_completions = None

    with pytest.raises(MemforgeError, match="_generate_and_score_completions"):
        check_trl_hook(NoHook)

    class NoSingleTurn(GRPOTrainer):
        _generate_single_turn = None

    with pytest.raises(MemforgeError, match="_generate_single_turn"):
        check_trl_hook(NoSingleTurn)

    class RewardsMoved(GRPOTrainer):
        def _calculate_rewards(self, batch):
            return None

    with pytest.raises(MemforgeError, match="signature"):
        check_trl_hook(RewardsMoved)

    class LossIgnoresAdvantages(GRPOTrainer):
        def _compute_loss(self, model, inputs):
            return inputs["prompt_ids"].sum()

    with pytest.raises(MemforgeError, match="advantages"):
        check_trl_hook(LossIgnoresAdvantages)


# ---------------------------------------------------------------------------------------------
# rollout: streaming, lock step, memory overwrite


def test_rollout_streams_chunks_and_overwrites_memory(tiny_model_dir: Path) -> None:
    """Two questions (3 and 1 chunks), two trajectories each, greedy generation by the real tiny model."""
    import torch

    from components.llm.model_assets import load_model_folder

    model, tokenizer = load_model_folder(tiny_model_dir, "float32")
    encode, decode = tokenizer_codec(tokenizer)
    reader = ReaderConfig(chunk_tokens=24, memory_tokens=6, answer_tokens=5)
    consumed: list[int] = []

    def long_pieces():
        for i, doc in enumerate(DOCS):
            consumed.append(i)
            yield doc

    short = TrainSample("short", "Who likes coffee?", ("Carol",), lambda: ["Carol likes coffee."])
    long = TrainSample("long", "Where does Alice live?", ("Paris",), long_pieces)
    expected_chunks = [decode(c) for c in chunk_ids(token_stream(DOCS, encode), 24)]
    consumed.clear()
    assert len(expected_chunks) == 3
    calls: list[dict] = []

    def render(messages) -> list[int]:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]

    def generate(conversations, max_new_tokens):
        calls.append({"n": len(conversations), "limit": max_new_tokens, "consumed": len(consumed)})
        prompt_ids = [render(c) for c in conversations]
        completion_ids = []
        for ids in prompt_ids:
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens)
            completion_ids.append(out[0, len(ids) :].tolist())
        return prompt_ids, completion_ids, tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

    trajectories = memagent_rollout.rollout([long, long, short, short], reader, encode, decode, generate)
    assert [t.conversations for t in trajectories] == [4, 4, 2, 2]  # chunks + the answer
    # lock step: step 1 has all four trajectories, steps 2-3 only the long question's two, then the four answers
    assert [(c["n"], c["limit"]) for c in calls] == [(4, 6), (2, 6), (2, 6), (4, 5)]
    assert calls[0]["consumed"] < len(DOCS) == calls[-1]["consumed"]  # pieces are read as chunks need them
    first = trajectories[0]
    memories = [""] + [tokenizer.decode(c, skip_special_tokens=True).strip() for c in first.completion_ids[:-1]]
    assert first.memory == memories[-1]
    for k, chunk in enumerate(expected_chunks):  # prompt k = chunk k + the memory written at step k - 1
        assert first.prompt_ids[k] == render(update_messages(long.question, memories[k], chunk))
        assert len(first.completion_ids[k]) <= reader.memory_tokens
    assert first.prompt_ids[-1] == render(answer_messages(long.question, first.memory))
    assert first.answer == tokenizer.decode(first.completion_ids[-1], skip_special_tokens=True)
    assert trajectories[0].prompt_ids == trajectories[1].prompt_ids  # greedy: both trajectories read alike


# ---------------------------------------------------------------------------------------------
# training


def test_one_step_rewards_advantages_and_the_reward_hook(boxed_model_dir: Path, tmp_path: Path) -> None:
    from components.llm.model_assets import load_model_folder

    seen: list[dict] = []

    def recording_em(prompts, completions, answers, sample_id, **kwargs):
        """The real reward, recording what TRL's reward hook hands it."""
        seen.append({"prompts": prompts, "answers": answers, "ids": sample_id, "completions": completions})
        kwargs["log_metric"]("recording/answers_seen", float(len(answers)))
        return memagent_rollout.boxed_em_reward(prompts, completions, answers)

    G = 6
    cfg = train_cfg(boxed_model_dir, tmp_path, max_steps=1, questions_per_step=2, num_generations=G)
    trainer = memagent.build_memagent_trainer(cfg, READER, SAMPLES, reward_funcs=[recording_em])
    before = _params(trainer.model)
    trainer.train()
    last = trainer.memagent_last
    trajectories = last["trajectories"]
    assert len(seen) == 1 and len(trajectories) == 2 * G  # one reward call: 2 questions x G trajectories
    call = seen[0]
    for i, t in enumerate(trajectories):
        assert list(call["answers"][i]) == list(t.sample.answers) and call["ids"][i] == t.sample.id
        assert call["prompts"][i] == answer_messages(t.sample.question, t.memory)
        assert call["completions"][i][0]["content"] == t.answer
        assert t.reward == reward(t.answer, t.sample.answers)
    rewards = last["rewards"]
    assert len(set(rewards[:G])) > 1 or len(set(rewards[G:])) > 1  # the fixture's policy makes groups differ
    by_hand = [r - np.mean(rewards[(i // G) * G : (i // G) * G + G]) for i, r in enumerate(rewards)]
    np.testing.assert_allclose(last["advantages"], by_hand, atol=1e-12)
    # every conversation row of a trajectory carries the trajectory's advantage
    np.testing.assert_allclose(last["row_advantages"], np.repeat(last["advantages"], last["conversations"]))
    assert sum(last["conversations"]) == last["row_advantages"].size
    assert all(n == len(trajectories[0].prompt_ids) >= 2 for n in last["conversations"])
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert logged["memagent/reward_mean"] == pytest.approx(float(np.mean(rewards)))
    assert logged["rewards/recording_em/mean"] == pytest.approx(float(np.mean(rewards)))
    assert logged["memagent/rows"] == float(sum(last["conversations"]))
    assert logged["recording/answers_seen"] == 2 * G  # a reward function's log_metric reaches the logs
    for key in ("kl", "clip_ratio/region_mean", "entropy", "memagent/boxed_fraction", "memagent/memory_tokens_mean"):
        assert key in logged
    records = last["records"]
    assert len(records) == 3 and {"question", "gold", "final_memory", "answer", "reward"} <= set(records[0])
    after = _params(trainer.model)
    assert any(not np.allclose(before[n], after[n]) for n in before)
    # the update raised the log-probability of advantaged conversations and lowered the others'
    base, _ = load_model_folder(boxed_model_dir, "float32")
    assert _surrogate_gain(base, trainer.model.eval(), trajectories) > 0


def test_train_memagent_two_steps_logs_and_saves_a_changed_model(boxed_model_dir: Path, tmp_path: Path) -> None:
    from components.llm.model_assets import MODEL_CARD_FILE, load_model_folder, read_model_card

    cfg = train_cfg(boxed_model_dir, tmp_path, questions_per_step=2)
    logs: list[tuple[dict, int]] = []
    outcome = memagent.train_memagent(cfg, READER, SAMPLES, on_log=lambda d, s: logs.append((d, s)))
    assert outcome.steps == 2 and outcome.resumed_from is None and math.isfinite(outcome.train_loss)
    step_logs = [d for d, _ in logs if "memagent/reward_mean" in d]
    assert len(step_logs) == 2
    expected = {
        "memagent/reward_std",
        "memagent/boxed_fraction",
        "memagent/conversations_per_trajectory",
        "memagent/memory_tokens_mean",
        "memagent/advantage_abs_mean",
        "kl",
        "clip_ratio/region_mean",
        "reward",
    }
    for d in step_logs:
        assert expected <= set(d)
        assert d["memagent/conversations_per_trajectory"] == 4.0  # 3 chunks of 24 tokens + the answer
        assert 0.0 < d["memagent/boxed_fraction"] <= 1.0
    assert any(d["memagent/advantage_abs_mean"] > 0 for d in step_logs)
    assert len(outcome.trajectories) == 3 and outcome.metrics()["steps"] == 2.0
    metrics, timings = outcome.metrics(), outcome.timings()
    assert "final_reward_mean" in metrics and metrics["resumed"] == 0.0 and metrics["questions"] == len(SAMPLES)
    assert set(timings) == {"seconds", "seconds_per_step"} and timings["seconds_per_step"] > 0
    assert not set(timings) & set(metrics)  # wall-clock timings go to MLflow only, never into the DVC metrics
    base, _ = load_model_folder(boxed_model_dir, "float32")
    trained, _ = load_model_folder(cfg.output_dir, "float32")
    before, after = _params(base), _params(trained)
    assert before.keys() == after.keys() and any(not np.allclose(before[n], after[n]) for n in before)
    card = read_model_card(cfg.output_dir)  # the same card as the sft and adrpo models, checked on reload
    assert card.dtype == "float32" and card.output_dir == cfg.output_dir
    raw = json.loads((Path(cfg.output_dir) / MODEL_CARD_FILE).read_text(encoding="utf-8"))
    assert raw["kind"] == "memagent" and raw["memagent"]["steps"] == 2 and raw["memagent"]["questions"] == len(SAMPLES)
    assert not list(Path(cfg.output_dir).parent.glob(".*"))  # no staging or old folder left beside it


class Crash(RuntimeError):
    """Stands for the process being killed."""


def test_a_killed_run_resumes_from_its_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Resuming needs no reward signal: the plain random tiny model, G=2."""
    cfg = train_cfg(tiny_model_dir, tmp_path, save_steps=1, beta=0.0, num_generations=2)

    def crash_at_step_two(logs: dict, step: int) -> None:
        if step >= 2:
            raise Crash("killed")  # step 2 is trained but its checkpoint is never written (logs come first)

    with pytest.raises(Crash):
        memagent.train_memagent(cfg, READER, SAMPLES, on_log=crash_at_step_two)
    checkpoints = Path(cfg.checkpoint_dir)
    assert latest_checkpoint(checkpoints).endswith("checkpoint-1")
    assert not Path(cfg.output_dir).exists()
    steps: list[int] = []
    outcome = memagent.train_memagent(cfg, READER, SAMPLES, on_log=lambda d, s: steps.append(s))
    assert outcome.resumed_from is not None and outcome.resumed_from.endswith("checkpoint-1")
    assert outcome.steps == 2 and set(steps) == {2}  # the rerun trained step 2 only, not from 0
    assert (checkpoints / "checkpoint-2").is_dir() and (Path(cfg.output_dir) / "config.json").is_file()


def test_context_window_is_checked_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    reader = ReaderConfig(chunk_tokens=2000, memory_tokens=64, answer_tokens=8)
    with pytest.raises(MemforgeError, match="window is 2048"):
        memagent.build_memagent_trainer(train_cfg(tiny_model_dir, tmp_path), reader, SAMPLES)
    with pytest.raises(MemforgeError, match="questions_per_step=3"):
        memagent.build_memagent_trainer(train_cfg(tiny_model_dir, tmp_path, questions_per_step=3), READER, SAMPLES)


def test_grpo_args_come_from_the_shared_builder_plus_memagent_fields(tmp_path: Path) -> None:
    import torch

    cfg = train_cfg(tmp_path / "model", tmp_path, questions_per_step=3, num_generations=4, save_steps=2, bf16=True)
    args = memagent.grpo_args(cfg, READER)
    cuda = torch.cuda.is_available()
    shared = shared_arguments(
        output_dir=cfg.checkpoint_dir,
        seed=0,
        bf16=True,
        logging_steps=1,
        save_steps=2,
        cuda=cuda,
    )
    assert {key: getattr(args, key) for key in shared} == {**shared, "report_to": []}  # TRL reads "none" as []
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.bf16 is cuda and args.use_cpu is not cuda and args.save_total_limit == 1  # the latest kept
    assert (args.num_generations, args.beta, args.epsilon, args.loss_type, args.learning_rate) == (
        4,
        1e-3,
        0.2,
        "dapo",
        1e-2,
    )
    assert args.per_device_train_batch_size == 12 and args.generation_batch_size == 12  # 3 questions x G
    assert args.max_completion_length == 12 and args.shuffle_dataset and not args.remove_unused_columns
    assert args.steps_per_generation == 1 and args.num_iterations == 1 and not args.use_vllm
    if not cuda:
        with pytest.raises(MemforgeError, match=r"memagent\.train\.use_vllm needs a CUDA GPU"):
            memagent.grpo_args(replace(cfg, use_vllm=True), READER)
