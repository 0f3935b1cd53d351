"""A tiny, real, randomly initialised chat model for tests and benchmarks (built offline in well under a second).

The folder it writes is an ordinary ``from_pretrained`` folder: a byte-level BPE tokenizer (trained here on a
built-in English corpus, so any text round-trips and nothing is ever ``<unk>``) with a ChatML chat template, and a
``LlamaForCausalLM`` of a few tens of thousands of parameters. It works as ``ModelConfig(name_or_path=<folder>)``
for ``prepare_model`` and with ``apply_chat_template(..., add_generation_prompt=True)`` + ``model.generate``.
"""

from __future__ import annotations

from pathlib import Path

from components.llm.model_assets import CHATML_TEMPLATE

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, IM_START, IM_END)  # ids 0..3, in this order

# A built-in English corpus: conversation, memory and time vocabulary, in rough order of usefulness. The tokenizer
# learns about one merge per word used, so ``vocab_words`` bounds the vocabulary (about 260 + vocab_words).
_WORD_TEXT = """
    the a an and or but if then so because of to in on at by for with from about as into over after before
    is are was were be been being am do does did done have has had will would can could should may might must
    i you he she it we they me him her us them my your his its our their mine yours this that these those
    what who whom which when where why how yes no not all any some each every many much more most few other
    user assistant system memory remember recall forget note notes fact facts event events session sessions
    core episodic semantic procedural insert update delete add keep store save summary answer question context
    name named called live lives lived move moved moving work works worked job jobs company team manager friend
    friends family mother father sister brother daughter son wife husband partner child children dog cat pet
    home house city town country street school university college class course teacher student doctor nurse
    today yesterday tomorrow now later soon ago week weeks month months year years day days morning evening night
    monday tuesday wednesday thursday friday saturday sunday january february march april june july august
    september october november december spring summer autumn winter birthday holiday trip travel visit visited
    like likes liked love loves loved hate prefer prefers favourite favorite enjoy want wants need needs
    go goes went going come comes came get got make made take took see saw know knew think thought say said
    tell told ask asked give gave find found use used try tried start started stop stopped begin began end
    new old first last next previous same different good bad great small big long short high low right wrong
    one two three four five six seven eight nine ten hundred thousand number numbers time times date dates
    food coffee tea water dinner lunch breakfast restaurant book books music song movie game sport running
    car bike bus train plane phone email message meeting project plan plans goal goals idea problem change
    changed changes again still also only just very really well here there up down out off back away
    please thank thanks hello hi sorry okay sure maybe because while during since until between under
    hospital office shop market park garden beach mountain river lake sea island village station airport
    red blue green yellow black white brown orange purple pink colour color language english french spanish
    german italian chinese japanese doctor engineer lawyer artist writer chef pilot scientist designer
    happy sad tired busy free ready sick healthy angry excited worried calm early late fast slow easy hard
    paris london berlin tokyo rome madrid lisbon boston seattle chicago toronto sydney dublin oslo vienna
    alice bob carol dave emma frank grace henry irene jack kate liam maria noah olivia paul rosa sam tom
    document chunk passage evidence retrieve retrieval search query result results score reward step steps
"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORD_TEXT.split()))  # unique, in order

# Sentences that exercise punctuation, digits and the chat layout, so common pieces ("'s", ". ", "2024") merge.
_SENTENCES = (
    "Hello! My name is Alice and I live in Paris.",
    "I moved to Berlin in March 2024, so I don't live in Paris anymore.",
    "What is the user's favourite food? It's pizza, but last year it was sushi.",
    "Remember: the meeting is on Monday at 10:30 with Bob and Carol.",
    "Q: Where does the user work now? A: At a hospital in Lisbon (since 2023).",
    '{"op": "insert", "memory": "core", "content": "The user is a nurse."}',
    "Step 1: read the chunk. Step 2: update the memory. Step 3: answer the question.",
    "Dates: 2023-05-17, 2024/01/02, 12 June 2022; numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.",
)


def training_corpus(vocab_words: int | None = None) -> list[str]:
    """The lines the tokenizer is trained on: the first ``vocab_words`` words (all when None) plus the sentences."""
    words = WORDS if vocab_words is None else WORDS[: max(0, vocab_words)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() for w in words[:64]]
    lines += list(_SENTENCES)
    return lines


def build_tokenizer(vocab_words: int | None = None):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer with ChatML special tokens and chat template, eos ``<|im_end|>``, pad ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    n_words = len(WORDS) if vocab_words is None else max(0, min(vocab_words, len(WORDS)))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(alphabet) + n_words,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(training_corpus(vocab_words), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=2048,
        padding_side="left",  # decoder-only generation pads on the left
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(
    output_dir: str | Path,
    *,
    vocab_words: int | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny seeded ``LlamaForCausalLM`` + tokenizer folder to ``output_dir`` and return its path.

    Deterministic: the same arguments give byte-identical weights and tokenizer files.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden_size < 8 or hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of 4 and at least 8, got {hidden_size}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    tokenizer = build_tokenizer(vocab_words)
    heads = 4
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,  # grouped-query attention, as SmolLM2 and Qwen use
        head_dim=hidden_size // heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
