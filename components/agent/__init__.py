"""MemAgent: read any length of input chunk by chunk into a fixed-size, overwritten memory; answer from it.

* ``prompts``: the memory-update and final-answer messages (the paper's templates, reworded);
* ``chunking``: streaming token chunking of text pieces (documents), never the whole input at once;
* ``scoring``: ``\\boxed{}`` extraction, answer normalisation, substring EM / EM / F1, the 0/1 GRPO reward;
* ``reader``: the batched reader over a generation backend (``read``), the full-context baseline
  (``full_context_answer``), a backend for a model folder (``build_reader_backend``) and ``memforge read``'s body
  (``read_file``).
"""
