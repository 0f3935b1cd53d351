"""``ADRPOTrainer``: TRL's ``GRPOTrainer`` whose advantages are ADRPO's attributed ones (pinned: TRL 1.16).

``components.training.adrpo`` explains the method and builds this trainer; it imports this module (and so TRL) only
when it trains. The trainer takes its reward function, an ``adrpo.ADRPOReward``, as ``adrpo_reward``: TRL calls it
to reward each generation batch, and it keeps that batch's scores, which the overridden hook takes to rewrite the
advantages and to log ADRPO's statistics.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from trl import GRPOTrainer

from components.errors import MemforgeError
from components.memory.types import PARTS
from components.rewards import rewrite_advantages
from components.training.trl_guard import HOOK, check_trl_version, require_keys, require_method

logger = logging.getLogger(__name__)

WHO = "adrpo"


def check_trl_hook(trainer_cls: type | None = None) -> None:
    """Raise ``MemforgeError`` unless ``trainer_cls`` (default: TRL's ``GRPOTrainer``, whose version is checked
    too) has the hook ADRPO overrides: ``_generate_and_score_completions(inputs)``, building an ``"advantages"``
    entry in the dict it returns."""
    if trainer_cls is None:
        check_trl_version(WHO)
        trainer_cls = GRPOTrainer
    require_method(trainer_cls, HOOK, ("self", "inputs"), WHO, "ADRPO rewrites the advantages this hook returns")
    require_keys(trainer_cls, HOOK, ("advantages",), WHO, "ADRPO replaces that entry with its attributed advantages")


class ADRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are ADRPO's attributed ones (see ``components.training.adrpo``)."""

    def __init__(self, *args: Any, adrpo_reward: Any, **kwargs: Any) -> None:
        check_trl_hook()
        check_trl_hook(type(self))
        if kwargs.get("reward_funcs") is None:
            kwargs["reward_funcs"] = [adrpo_reward]
        funcs = kwargs["reward_funcs"]
        funcs = funcs if isinstance(funcs, list) else [funcs]
        if funcs != [adrpo_reward]:
            raise MemforgeError("adrpo: the ADRPO reward must be the trainer's only reward function")
        super().__init__(*args, **kwargs)
        args_ = self.args
        if args_.steps_per_generation != 1 or args_.num_iterations != 1:
            # supported by the rewrite (it covers the whole generation batch), but the batch-size rule assumes 1
            logger.info(
                "adrpo: steps_per_generation=%s num_iterations=%s", args_.steps_per_generation, args_.num_iterations
            )
        if args_.shuffle_dataset:
            raise MemforgeError(
                "adrpo: shuffle_dataset must be False (a session's four prompts must stay together; shuffle "
                "sessions with order_by_session instead)"
            )
        if args_.generation_batch_size % (len(PARTS) * self.num_generations):
            raise MemforgeError(
                f"adrpo: generation batch of {args_.generation_batch_size} completions does not hold whole "
                f"sessions (4 agents x G={self.num_generations}); use adrpo_batch_size()"
            )
        self.adrpo_reward = adrpo_reward
        self.adrpo_last: dict[str, Any] = {}
        self.adrpo_samples: list[dict[str, Any]] = []  # the last scored batch, one row per completion

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        output = super()._generate_and_score_completions(inputs)
        if "advantages" not in output:
            raise MemforgeError(f"adrpo: GRPOTrainer.{HOOK} returned no 'advantages' (keys: {sorted(output)})")
        scored = self.adrpo_reward.take()
        trl_advantages = output["advantages"]
        batch = scored.batch
        if trl_advantages.dim() != 1 or trl_advantages.shape[0] != batch.rewards.shape[0]:
            raise MemforgeError(
                f"adrpo: TRL advantages have shape {tuple(trl_advantages.shape)}, but {batch.rewards.shape[0]} "
                "completions were scored on this process"
            )
        advantages = rewrite_advantages(batch.rewards, batch.group_ids, batch.weights)
        output["advantages"] = torch.as_tensor(advantages, dtype=trl_advantages.dtype, device=trl_advantages.device)
        self.adrpo_last = {
            "rewards": batch.rewards.copy(),
            "group_ids": batch.group_ids.copy(),
            "weights": batch.weights.copy(),
            "trl_advantages": trl_advantages.detach().cpu().numpy().copy(),
            "advantages": np.asarray(advantages, dtype=np.float64).copy(),
            "scores": scored.scores,
        }
        self.adrpo_samples = scored.rows(advantages, int(self.state.global_step) + 1)
        mode = "train" if self.model.training else "eval"
        logged = self._logs["advantages"]
        if self.accelerator.num_processes == 1 and len(logged) >= len(advantages):
            # the completions table shows the advantages the loss uses (TRL logged its own just before)
            for _ in range(len(advantages)):
                logged.pop()
            logged.extend(float(a) for a in advantages)
        for key, value in scored.logged_stats(advantages).items():
            self._metrics[mode][key].append(value)
        return output
