"""ADRPO's reward and attribution layer: pure, typed, batch-friendly functions.

* ``rollouts``: ``SessionGroup`` (one session, G rollouts per agent), ``format_gate``, ``apply_rollout``,
  ``groups_from_batch`` (TRL batch -> groups + ``BatchLayout``);
* ``penalties``: ``core_length_penalty``, ``ratio_length_penalty``, ``length_penalty``;
* ``judges``: ``ContainmentJudge``, ``LLMJudge`` (batched over every question of every memory);
* ``attribution``: ``ATTRIBUTION_MODES``; ``retrieval_counts``, ``dominant_part``, ``retrieval_share_weights``
  (published, per rollout); ``answer_hit_counts``, ``answer_hits_weights``; ``ablation_weights``;
* ``advantages``: ``group_advantages``, ``rewrite_advantages`` (numpy or torch);
* ``memory_rewards``: ``score_groups`` -> ``GroupScores`` (rewards, factors, weights, MLflow stats).

A GRPOTrainer subclass calls, per step::

    groups, layout = groups_from_batch(rows, completions, cache=cache, memory_config=params.memory)
    scores = score_groups(groups, judge, params.adrpo, backend.count_tokens)
    batch = scores.gather(layout)                      # rewards, group_ids, per-rollout weights, batch order
    advantages = rewrite_advantages(batch.rewards, batch.group_ids, batch.weights)
    log(scores.stats())
"""

from components.rewards.advantages import DEFAULT_EPS, group_advantages, rewrite_advantages
from components.rewards.attribution import (
    ATTRIBUTION_MODES,
    ablation_weights,
    answer_hit_counts,
    answer_hits_weights,
    dominant_part,
    retrieval_counts,
    retrieval_share_weights,
)
from components.rewards.judges import (
    ContainmentJudge,
    Judge,
    JudgeItem,
    LLMJudge,
    Verdict,
    judge_messages,
    make_judge,
    parse_judgement,
)
from components.rewards.memory_rewards import (
    GroupScore,
    GroupScores,
    RewardBatch,
    RolloutScore,
    grpo_group_id,
    score_groups,
)
from components.rewards.penalties import core_length_penalty, length_penalty, ratio_length_penalty
from components.rewards.rollouts import (
    AgentApplication,
    AppliedRollout,
    BatchLayout,
    SessionGroup,
    SessionQuestion,
    apply_agent,
    apply_rollout,
    completion_text,
    format_gate,
    groups_from_batch,
    parse_output,
)

__all__ = [
    "ATTRIBUTION_MODES",
    "DEFAULT_EPS",
    "AgentApplication",
    "AppliedRollout",
    "BatchLayout",
    "ContainmentJudge",
    "GroupScore",
    "GroupScores",
    "Judge",
    "JudgeItem",
    "LLMJudge",
    "RewardBatch",
    "RolloutScore",
    "SessionGroup",
    "SessionQuestion",
    "Verdict",
    "ablation_weights",
    "answer_hit_counts",
    "answer_hits_weights",
    "apply_agent",
    "apply_rollout",
    "completion_text",
    "core_length_penalty",
    "dominant_part",
    "format_gate",
    "group_advantages",
    "groups_from_batch",
    "grpo_group_id",
    "judge_messages",
    "length_penalty",
    "make_judge",
    "parse_judgement",
    "parse_output",
    "ratio_length_penalty",
    "retrieval_counts",
    "retrieval_share_weights",
    "rewrite_advantages",
    "score_groups",
]
