"""Memory bank at 10^3, 10^4 and 10^5 entries: retrieval latency, apply throughput, snapshot cost, cache reuse.

Banks are built with ``HashingEmbedder(dim=384)``: a lexical embedder with MiniLM's dimension, so the
matrices, matrix products and top-k cost what they would with MiniLM while building 10^5 entries takes
seconds instead of many CPU minutes. With ``--minilm`` the real MiniLM-L6 is also measured (build =
embedding throughput, retrieval including query encoding) at the sizes given there.

    python benchmarks/bench_memory.py                          # 10^3, 10^4, 10^5 (+ MiniLM at 10^3, 10^4)
    python benchmarks/bench_memory.py --sizes 10000 --minilm   # one size, no MiniLM

Measured per size:
* retrieval: median / p95 ms of a single-query top-10 ``bank.retrieve`` over the three entry parts
  (end to end: query embedding + one matrix product per segment + ``argpartition``), the same with the
  query vector given (search only), and ms per query in a 64-query batch;
* apply: operations per second for ADD / UPDATE / DELETE / mixed lists of 10 (validation + apply; embedding
  is lazy, so the "mixed + embed" row adds the embedding of the new texts);
* snapshot: median ms of ``snapshot()``, and of a snapshot followed by its first write (the copy-on-write);
* cache loop: G=4 rollouts per session on snapshots of the pre-session bank, each applying a few teacher-like
  operations and answering 5 questions; reports the cache hit rate and how many unchanged entries were
  embedded again (target: 0).

Targets (2 cores): retrieval median < 20 ms at 10^5; snapshot of a 10^4-entry bank < 5 ms; no unchanged
entry re-embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from components.memory.bank import MemoryBank
from components.memory.embedder import HashingEmbedder, SentenceTransformerEmbedder
from components.memory.retrieval import search
from components.memory.types import ENTRY_PARTS, EntryAdd, EntryDelete, EntryOperation, EntryUpdate

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
PART_SHARE = (("episodic", 0.4), ("semantic", 0.4), ("procedural", 0.2))
NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Emre",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Marco",
    "Nia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
]
PLACES = [
    "Lisbon",
    "Porto",
    "Kyoto",
    "Lagos",
    "Lima",
    "Oslo",
    "Quito",
    "Seoul",
    "Tunis",
    "Vienna",
    "Cork",
    "Accra",
    "Hanoi",
    "Perth",
    "Dakar",
    "Bergen",
]
THINGS = [
    "bike",
    "guitar",
    "laptop",
    "sofa",
    "kayak",
    "camera",
    "piano",
    "tent",
    "violin",
    "drone",
    "scooter",
    "oven",
    "desk",
    "lamp",
    "rug",
    "kettle",
    "telescope",
    "chessboard",
    "easel",
    "sewing-machine",
]
VERBS = ["bought", "sold", "repaired", "borrowed", "painted", "lost", "found", "gifted", "rented", "cleaned"]
TOPICS = ["tax", "visa", "rent", "gym", "diet", "insurance", "school", "vet", "garden", "loan"]


class CountingEmbedder:
    """Wraps an embedder and counts every text it embeds (to find re-embeddings)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()

    def embed(self, texts: list[str]) -> np.ndarray:
        self.counts.update(texts)
        return self.inner.embed(texts)


def fact(rng: random.Random, serial: int) -> str:
    """A memory-like sentence; ``serial`` keeps texts distinct."""
    name, place, thing = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS)
    templates = (
        f"On day {serial} the user {rng.choice(VERBS)} a {thing} with {name} in {place}.",
        f"The user's friend {name} lives in {place} and owns a {thing} (note {serial}).",
        f"To handle {rng.choice(TOPICS)} paperwork the user calls {name} first, step {serial}.",
    )
    return rng.choice(templates)


def question(rng: random.Random) -> str:
    return f"What did the user do with the {rng.choice(THINGS)} in {rng.choice(PLACES)} with {rng.choice(NAMES)}?"


def session(number: int) -> dict[str, Any]:
    return {
        "session_id": f"S{number}",
        "session_timestamp": f"2024-01-01T{number % 24:02d}:00",
        "session_turn_ids": [f"S{number}-t{i}" for i in range(8)],
    }


def build(size: int, embedder: Any, seed: int = 0) -> tuple[MemoryBank, dict[str, float]]:
    """A bank of ``size`` entries added in sessions of 100 ADDs, then embedded; returns timings."""
    rng = random.Random(seed)
    bank = MemoryBank(embedder=embedder)
    started = time.perf_counter()
    serial = 0
    for part, share in PART_SHARE:
        remaining = int(size * share) if part != "procedural" else size - serial
        while remaining > 0:
            batch = min(100, remaining)
            ops = [EntryAdd(fact(rng, serial + i)) for i in range(batch)]
            bank.apply_entries(part, ops, **session(serial // 100))
            serial += batch
            remaining -= batch
    applied = time.perf_counter()
    bank.embed_pending()
    embedded = time.perf_counter()
    return bank, {"apply_s": round(applied - started, 3), "embed_s": round(embedded - applied, 3)}


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds per call."""
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def retrieval_latency(bank: MemoryBank, rng: random.Random, repeats: int) -> dict[str, float]:
    queries = [f"{question(rng)} #{i}" for i in range(repeats + 10)]  # distinct: the query embedding is a miss
    for q in queries[:10]:
        bank.retrieve(q, k=10)  # warm up
    it = iter(queries[10:])
    end_to_end = timed(lambda: bank.retrieve(next(it), k=10), repeats)
    cache = bank.embedding_cache
    assert cache is not None
    vectors = cache.embed(queries[:repeats])
    lookup = {part: bank._stores[part].entries for part in ENTRY_PARTS}
    indexes = [(part, bank._stores[part].index) for part in ENTRY_PARTS]
    rows = iter(range(repeats))
    search_only = timed(lambda: search(indexes, vectors[next(rows)][None, :], 10, lookup), repeats)
    batch = [f"{question(rng)} batch {i}" for i in range(64)]
    batch_ms = timed(lambda: bank.retrieve(batch, k=10), 1)[0] / 64
    return {
        "retrieve_median_ms": round(statistics.median(end_to_end), 3),
        "retrieve_p95_ms": round(pct(end_to_end, 95), 3),
        "search_only_median_ms": round(statistics.median(search_only), 3),
        "batch64_ms_per_query": round(batch_ms, 3),
    }


def snapshot_cost(bank: MemoryBank, repeats: int) -> dict[str, float]:
    plain = timed(bank.snapshot, repeats)
    first_id = bank.entries("semantic")[0].entry_id
    op = [EntryUpdate(first_id, "The user changed this fact.")]

    def snapshot_and_write() -> None:
        bank.snapshot().apply_entries("semantic", op, **session(0))

    first_write = timed(snapshot_and_write, max(20, repeats // 50))
    return {
        "snapshot_median_ms": round(statistics.median(plain), 4),
        "snapshot_p95_ms": round(pct(plain, 95), 4),
        "snapshot_first_write_median_ms": round(statistics.median(first_write), 3),
    }


def apply_throughput(bank: MemoryBank, rng: random.Random, calls: int) -> dict[str, float]:
    """ops/s for lists of 10 operations on one snapshot (copy-on-write already paid by a first write)."""
    work = bank.snapshot()
    work.apply_entries("semantic", [EntryAdd("warm-up fact")], **session(1))
    pools = {part: [e.entry_id for e in work.entries(part)] for part in ENTRY_PARTS}
    for pool in pools.values():
        rng.shuffle(pool)
    serial = 10**7
    results = {}

    def ops_for(kind: str, part: str) -> list[EntryOperation]:
        """Ten operations on distinct live ids (operations are built before timing starts)."""
        nonlocal serial
        targets = [pools[part].pop() for _ in range(20)]
        out: list[EntryOperation] = []
        for i in range(10):
            choice = kind if kind != "mixed" else rng.choices(["add", "update", "delete"], [5, 3, 2])[0]
            serial += 1
            if choice == "add":
                out.append(EntryAdd(fact(rng, serial)))
            elif choice == "update":
                out.append(EntryUpdate(targets[i], fact(rng, serial)))
            else:
                out.append(EntryDelete(targets[10 + i]))
        deleted = {op.entry_id for op in out if isinstance(op, EntryDelete)}
        pools[part][:0] = [t for t in targets if t not in deleted]  # back at the far end of the pool
        return out

    for kind in ("add", "update", "delete", "mixed"):
        batches = [
            (part, ops_for(kind, part)) for part in rng.choices(ENTRY_PARTS, [s for _, s in PART_SHARE], k=calls)
        ]
        seconds = _apply_all(work, batches)
        results[f"{kind}_ops_per_s"] = round(10 * calls / seconds)
        work.embed_pending()  # keep later rounds' numbers free of leftover embedding work
    batches = [(part, ops_for("mixed", part)) for part in rng.choices(ENTRY_PARTS, [s for _, s in PART_SHARE], k=calls)]
    started = time.perf_counter()
    _apply_all(work, batches)
    work.embed_pending()
    results["mixed_with_embedding_ops_per_s"] = round(10 * calls / (time.perf_counter() - started))
    return results


def _apply_all(bank: MemoryBank, batches: list[tuple[str, list[EntryOperation]]]) -> float:
    started = time.perf_counter()
    for part, ops in batches:
        bank.apply_entries(part, ops, **session(2))  # type: ignore[arg-type]
    return time.perf_counter() - started


def cache_loop(size: int, sessions: int = 20, group: int = 4, seed: int = 5) -> dict[str, float]:
    """Snapshot -> apply a few ops -> retrieve, G rollouts per session, through one shared cache."""
    counter = CountingEmbedder(HashingEmbedder(384))
    bank, _ = build(size, counter, seed)
    cache = bank.embedding_cache
    assert cache is not None
    before = cache.stats()
    rng = random.Random(seed)
    pre = bank
    started = time.perf_counter()
    for number in range(sessions):
        pre.embed_pending()
        unchanged = {e.text for part in ENTRY_PARTS for e in pre.entries(part)}
        questions = [f"{question(rng)} s{number}" for _ in range(5)]
        shared = [fact(rng, 10**8 + number * 10 + i) for i in range(3)]
        rollouts = []
        embedded_before = counter.counts.copy()
        for g in range(group):
            rollout = pre.snapshot()
            live = [e.entry_id for e in rng.sample(rollout.entries("episodic"), 2)]
            ops = [EntryAdd(shared[0]), EntryAdd(shared[1]), EntryAdd(f"{shared[2]} (rollout {g})")]
            ops += [EntryUpdate(live[0], f"{shared[2]} updated"), EntryDelete(live[1])]
            rollout.apply_entries("episodic", ops, **session(number))
            rollout.retrieve(questions, k=10)
            rollouts.append(rollout)
        fresh = counter.counts - embedded_before
        reembedded = sum(1 for text in fresh if text in unchanged)
        if reembedded:
            raise AssertionError(f"session {number}: {reembedded} unchanged entries were embedded again")
        pre = rollouts[0]
    seconds = time.perf_counter() - started
    hits, misses = cache.hits - before["hits"], cache.misses - before["misses"]
    return {
        "loop_sessions": sessions,
        "loop_group": group,
        "loop_seconds": round(seconds, 3),
        "loop_cache_hit_rate": round(hits / (hits + misses), 4),
        "loop_texts_embedded": cache.embedded - before["embedded"],
        "loop_texts_embedded_twice": sum(1 for n in counter.counts.values() if n > 1),
        "unchanged_entries_reembedded": 0,
    }


def measure(size: int, embedder_name: str, repeats: int) -> dict[str, Any]:
    rng = random.Random(size)
    embedder = HashingEmbedder(384) if embedder_name == "hashing-384" else SentenceTransformerEmbedder(batch_size=64)
    bank, build_times = build(size, embedder)
    row: dict[str, Any] = {"entries": size, "embedder": embedder_name, **build_times}
    segments = [bank._stores[p].index.segment_sizes for p in ENTRY_PARTS]
    row["segments_per_part"] = [len(s) for s in segments]
    row.update(retrieval_latency(bank, rng, repeats))
    row.update(snapshot_cost(bank, 2000 if size <= 10_000 else 500))
    if embedder_name == "hashing-384":
        row.update(apply_throughput(bank, rng, calls=min(300, size // 25)))
        row.update(cache_loop(size))
    else:
        row.update(one_blas_thread(lambda: retrieval_latency(bank, rng, repeats)))
    return row


def one_blas_thread(measure_fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The retrieval figures again with BLAS on one thread: torch's OpenMP threads and OpenBLAS's threads
    contend when they alternate on few cores (threadpoolctl comes with sentence-transformers' dependencies)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return {}
    with threadpool_limits(limits=1, user_api="blas"):
        figures = measure_fn()
    return {f"{key}_blas1": value for key, value in figures.items()}


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.processor() or platform.system()}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("entries", "entries"),
        ("embedder", "embedder"),
        ("build s (apply+embed)", lambda r: f"{r['apply_s']}+{r['embed_s']}"),
        ("retrieve ms med/p95", lambda r: f"{r['retrieve_median_ms']}/{r['retrieve_p95_ms']}"),
        ("same, 1 BLAS thread", lambda r: _blas1(r)),
        ("search-only ms", "search_only_median_ms"),
        ("batch64 ms/q", "batch64_ms_per_query"),
        ("snapshot ms", "snapshot_median_ms"),
        ("snap+1st write ms", "snapshot_first_write_median_ms"),
        ("ADD/UPD/DEL/mix ops/s", lambda r: _ops(r)),
        ("cache hit", lambda r: r.get("loop_cache_hit_rate", "")),
        ("re-embedded", lambda r: r.get("unchanged_entries_reembedded", "")),
    ]
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    lines = [head, "|" + "---:|" * len(columns)]
    for row in rows:
        cells = [str(get(row) if callable(get) else row.get(get, "")) for _, get in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _blas1(row: dict[str, Any]) -> str:
    if "retrieve_median_ms_blas1" not in row:
        return ""
    return f"{row['retrieve_median_ms_blas1']}/{row['retrieve_p95_ms_blas1']}"


def _ops(row: dict[str, Any]) -> str:
    if "add_ops_per_s" not in row:
        return ""
    return "/".join(f"{row[f'{k}_ops_per_s']:,}" for k in ("add", "update", "delete", "mixed"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    parser.add_argument("--minilm", type=int, nargs="*", default=[1_000, 10_000], help="sizes measured with MiniLM")
    parser.add_argument("--repeats", type=int, default=200, help="single-query retrievals timed per size")
    parser.add_argument("--no-record", action="store_true", help="print only; do not update results/memory.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = []
    for name, sizes in (("hashing-384", args.sizes), ("minilm-l6", args.minilm)):
        for size in sizes:
            row = measure(size, name, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    hashing = {row["entries"]: row for row in rows if row["embedder"] == "hashing-384"}
    targets: dict[str, Any] = {}
    if 100_000 in hashing:
        targets["retrieve_median_under_20ms_at_1e5"] = hashing[100_000]["retrieve_median_ms"] < 20
    if 10_000 in hashing:
        targets["snapshot_under_5ms_at_1e4"] = hashing[10_000]["snapshot_median_ms"] < 5
    targets["no_unchanged_entry_reembedded"] = all(r.get("unchanged_entries_reembedded", 0) == 0 for r in rows)
    record = {
        "command": "python " + " ".join(["benchmarks/bench_memory.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "notes": (
            "hashing-384 = HashingEmbedder(dim=384): lexical, MiniLM's dimension, so index and search costs match "
            "MiniLM's; its build time is not MiniLM's. retrieve = end to end incl. query embedding (a cache miss); "
            "search-only = query vector given. apply ops/s exclude embedding (lazy) except the mixed_with_embedding "
            "row. minilm-l6 rows: build embed_s = MiniLM encoding on CPU; retrieve includes MiniLM query encoding "
            "(~11-13 ms per query on this machine); *_blas1 = the same with BLAS limited to one thread, which "
            "avoids contention between torch's OpenMP threads and OpenBLAS's threads on 2 cores."
        ),
        "rows": rows,
        "targets": targets,
    }
    print(table(rows))
    print(json.dumps(targets))
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
