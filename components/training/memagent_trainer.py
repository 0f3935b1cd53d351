"""``MemAgentTrainer``: TRL's ``GRPOTrainer`` whose generation batch expands into every conversation of every
trajectory (MemAgent's multi-conversation GRPO; pinned: TRL 1.16).

``components.training.memagent`` explains the objective and how the overridden hook plugs into TRL, and builds this
trainer; it imports this module (and so TRL) only when it trains. The steps of the hook that need no TRL (reading,
reward, advantages, statistics) are in ``memagent_rollout``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad, use_adapter

from components.agent.chunking import tokenizer_codec
from components.agent.prompts import answer_messages
from components.config import ReaderConfig
from components.errors import MemforgeError
from components.llm.backends import Message
from components.training.memagent_rollout import (
    METRIC_PREFIX,
    TrainSample,
    boxed_em_reward,
    broadcast_advantages,
    group_advantages,
    rollout,
    trajectory_stats,
)
from components.training.trl_guard import HOOK, check_trl_version, require_keys, require_method

logger = logging.getLogger(__name__)

WHO = "memagent_train"

# The private TRL methods this trainer relies on, with the leading parameters it passes.
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    HOOK: ("self", "inputs"),
    "_tokenize_prompts": ("self", "prompts"),
    "_generate_single_turn": ("self", "prompt_ids", "images", "multimodal_fields", "num_generations"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_get_per_token_logps_and_entropies": ("self", "model", "input_ids", "attention_mask", "logits_to_keep"),
    "_compute_loss": ("self", "model", "inputs"),
}
# The keys of the hook's output that TRL's ``_compute_loss`` must read.
LOSS_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "ref_per_token_logps")


def check_trl_hook(trainer_cls: type | None = None) -> None:
    """Raise ``MemforgeError`` unless ``trainer_cls`` (default: TRL's ``GRPOTrainer``, whose version is checked
    too) has what this trainer uses: every method of ``REQUIRED_METHODS`` with those leading parameters, a hook that
    builds an ``"advantages"`` entry, and a ``_compute_loss`` that reads the keys of ``LOSS_KEYS``."""
    if trainer_cls is None:
        check_trl_version(WHO)
        trainer_cls = GRPOTrainer
    for method, parameters in REQUIRED_METHODS.items():
        require_method(trainer_cls, method, parameters, WHO, "the multi-conversation trainer needs it")
    require_keys(trainer_cls, HOOK, ("advantages",), WHO, "the hook returns the advantages the loss uses")
    require_keys(trainer_cls, "_compute_loss", LOSS_KEYS, WHO, "the hook's output would not reach the loss")


class MemAgentTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose generation batch expands into every conversation of every trajectory (see
    ``components.training.memagent``)."""

    def __init__(
        self, *args: Any, samples: Sequence[TrainSample], reader: ReaderConfig, log_trajectories: int = 4, **kw: Any
    ) -> None:
        check_trl_hook()
        check_trl_hook(type(self))
        if kw.get("reward_funcs") is None:
            kw["reward_funcs"] = [boxed_em_reward]
        super().__init__(*args, **kw)
        if self.args.steps_per_generation != 1:
            raise MemforgeError(
                "memagent_train: steps_per_generation must be 1 (TRL splits a generation batch into equal row "
                f"slices, and a step's conversation count varies); got {self.args.steps_per_generation}"
            )
        self.memagent_samples = list(samples)
        self.memagent_reader = reader
        self.memagent_codec = tokenizer_codec(self._tokenizer)
        self.memagent_log_trajectories = log_trajectories
        self.memagent_window = getattr(self.model.config, "max_position_embeddings", None)
        self.memagent_last: dict[str, Any] = {}
        if self.accelerator.num_processes > 1:
            logger.warning(
                "memagent_train: %d processes: each reads its own questions, so processes make different numbers "
                "of generation calls per step; generation paths with collectives (vLLM server, DeepSpeed ZeRO-3, "
                "FSDP) need equal counts and are not supported",
                self.accelerator.num_processes,
            )

    @contextmanager
    def _completion_limit(self, tokens: int) -> Iterator[None]:
        """Generate at most ``tokens`` new tokens inside the block (transformers and vLLM paths)."""
        config = getattr(self, "generation_config", None)
        kwargs = getattr(self, "generation_kwargs", None)
        vllm = getattr(self, "vllm_generation", None) if self.use_vllm else None
        saved = (
            getattr(config, "max_new_tokens", None),
            (kwargs or {}).get("max_new_tokens"),
            getattr(vllm, "max_completion_length", None),
        )
        if config is not None:
            config.max_new_tokens = tokens
        if kwargs is not None:
            kwargs["max_new_tokens"] = tokens
        if vllm is not None:
            vllm.max_completion_length = tokens
        try:
            yield
        finally:
            if config is not None:
                config.max_new_tokens = saved[0]
            if kwargs is not None:
                kwargs["max_new_tokens"] = saved[1]
            if vllm is not None:
                vllm.max_completion_length = saved[2]

    def _memagent_generate(
        self, conversations: list[list[Message]], max_new_tokens: int
    ) -> tuple[list[list[int]], list[list[int]], list[str]]:
        """Chat-template the conversations and sample one completion each, with TRL's generation path."""
        prompt_ids, _, _ = self._tokenize_prompts(conversations)
        prompt_ids = [list(ids) for ids in prompt_ids]
        with self._completion_limit(max_new_tokens):
            completion_ids, _ = self._generate_single_turn(prompt_ids, None, {}, 1)
        completion_ids = [list(ids) for ids in completion_ids]
        if self.memagent_window:
            longest = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True))
            if longest > self.memagent_window:
                raise MemforgeError(
                    f"memagent_train: a conversation of {longest} tokens exceeds the model's window of "
                    f"{self.memagent_window}; lower memagent.reader.chunk_tokens or memory_tokens"
                )
        return prompt_ids, completion_ids, self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

    def _memagent_logps(self, model: Any, ids: Any, mask: Any, keep: int) -> Any:
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model, ids, mask, keep, batch_size=self.args.per_device_train_batch_size
        )
        return logps

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        G = self.num_generations if mode == "train" else self.num_generations_eval
        samples = [self.memagent_samples[int(row["sample_index"])] for row in inputs]
        if len(samples) % G or any(len({id(s) for s in samples[i : i + G]}) != 1 for i in range(0, len(samples), G)):
            raise MemforgeError(
                f"memagent_train: the generation batch does not hold whole groups of G={G} rows per question"
            )

        encode, decode = self.memagent_codec
        trajectories = rollout(samples, self.memagent_reader, encode, decode, self._memagent_generate)

        # rewards through TRL's reward hook (gathered over processes), advantages = reward - group mean
        prompts = [answer_messages(t.sample.question, t.memory) for t in trajectories]
        completions = [[{"role": "assistant", "content": t.answer}] for t in trajectories]
        rewards_per_func = self._calculate_rewards(
            inputs, prompts, completions, [t.completion_ids[-1] for t in trajectories]
        )
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        all_rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        all_rewards[unscorable] = torch.nan
        all_rewards = all_rewards.cpu().numpy().astype(np.float64)
        all_advantages = group_advantages(all_rewards, np.arange(len(all_rewards)) // G)
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        for t, r, a in zip(trajectories, all_rewards[local], all_advantages[local], strict=True):
            t.reward, t.advantage = float(r), float(a)
        counts = [t.conversations for t in trajectories]
        row_advantages = broadcast_advantages([t.advantage for t in trajectories], counts)

        # one row per conversation, trajectory-major
        prompt_rows = [torch.tensor(p) for t in trajectories for p in t.prompt_ids]
        completion_rows = [torch.tensor(c) for t in trajectories for c in t.completion_ids]
        pad_id, multiple = self._tokenizer.pad_token_id, self.pad_to_multiple_of
        prompt_ids = pad(prompt_rows, pad_id, "left", multiple).to(device)
        prompt_mask = pad([torch.ones_like(p) for p in prompt_rows], 0, "left", multiple).to(device)
        completion_ids = pad(completion_rows, pad_id, "right", multiple).to(device)
        completion_mask = pad([torch.ones_like(c) for c in completion_rows], 0, "right", multiple).to(device)
        num_items_in_batch = self.accelerator.gather(completion_mask.sum()).sum()
        advantages = torch.tensor(row_advantages, dtype=torch.float32, device=device)

        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        keep = completion_ids.size(1)
        old_per_token_logps = ref_per_token_logps = None
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            # as TRL: old log-probs only when this batch is reused across optimizer steps
            if self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations):
                old_per_token_logps = self._memagent_logps(self.model, ids, mask, keep)
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref_per_token_logps = self._memagent_logps(self.ref_model, ids, mask, keep)
                else:
                    unwrapped = self.accelerator.unwrap_model(self.model)
                    with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                        ref_per_token_logps = self._memagent_logps(self.model, ids, mask, keep)

        # logs: TRL's reward keys, then the reader's
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(float(torch.nanmean(rewards_per_func[:, i]).item()))
        scored = all_rewards[np.isfinite(all_rewards)]
        groups = all_rewards.reshape(-1, G)
        metrics["reward"].append(float(scored.mean()) if scored.size else 0.0)
        metrics["reward_std"].append(float(scored.std(ddof=1)) if scored.size > 1 else 0.0)
        metrics["frac_reward_zero_std"].append(float(np.mean(np.nanstd(groups, axis=1) == 0.0)))
        for name, values in self._pending_metrics.items():  # from reward functions' log_metric, as TRL does
            metrics[name].append(float(np.mean(values)) if values else math.nan)
        self._pending_metrics.clear()
        self._pending_extra_logs.clear()  # TRL's completions table is not kept (the trajectories are)
        tokens = int(self.accelerator.gather(prompt_mask.sum() + completion_mask.sum()).sum().item())
        if mode == "train":
            self.state.num_input_tokens_seen += tokens
        stats = trajectory_stats(trajectories, self.memagent_reader.memory_tokens)
        stats.update(
            chunks_per_question=stats["conversations_per_trajectory"] - 1.0,
            rows=float(len(completion_rows)),
            prompt_tokens_max=float(max(len(p) for p in prompt_rows)),
        )
        for key, value in stats.items():
            metrics[METRIC_PREFIX + key].append(value)

        step = int(self.state.global_step) + 1
        self.memagent_last = {
            "step": step,
            "rewards": np.array([t.reward for t in trajectories]),
            "advantages": np.array([t.advantage for t in trajectories]),
            "row_advantages": row_advantages,
            "conversations": counts,
            "trajectories": trajectories,
            "records": [t.record(step) for t in trajectories[: self.memagent_log_trajectories]],
        }
        output: dict[str, Any] = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": advantages,
            "num_items_in_batch": num_items_in_batch,
        }
        if old_per_token_logps is not None:
            output["old_per_token_logps"] = old_per_token_logps
        if ref_per_token_logps is not None:
            output["ref_per_token_logps"] = ref_per_token_logps
        return output
