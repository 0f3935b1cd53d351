"""Ingest + validate synthetic dialogues at 10^4 and 10^5 sessions: sessions/s and peak memory.

Each size runs in a fresh process (so peak RSS is that run's own): a synthetic corpus is written to
JSON Lines first (not timed), then the real ingest stage reads it, validates it with the
great-expectations suite in batches, splits it and writes the outputs.

    python benchmarks/bench_ingest.py                     # 10^4 and 10^5 sessions, records results
    python benchmarks/bench_ingest.py --sessions 10000    # one size

Targets (2-core machine): 10^5 sessions in under 60 s, peak memory under 2 GB, and peak memory
growing less than 2x from 10^4 to 10^5 sessions (streaming, not whole-corpus copies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"
SESSIONS_PER_CONVERSATION = 8


def worker(sessions: int, workdir: Path) -> dict[str, float]:
    """Write the corpus, then time the ingest stage over it; runs inside the child process."""
    from components.config import IngestConfig, SourceConfig, SyntheticConfig
    from components.datasets.ingest import ingest
    from components.dialogue.schema import conversation_to_dict
    from components.dialogue.synthetic import iter_conversations
    from components.io import dumps_jsonl_record

    conversations = sessions // SESSIONS_PER_CONVERSATION
    synthetic = SyntheticConfig(sessions_per_conversation=SESSIONS_PER_CONVERSATION, seed=11)
    corpus = workdir / "corpus.jsonl"
    started = time.perf_counter()
    with corpus.open("w", encoding="utf-8") as handle:
        for conversation in iter_conversations(synthetic, conversations):
            handle.write(dumps_jsonl_record(conversation_to_dict(conversation)))
    generate_seconds = time.perf_counter() - started
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    cfg = IngestConfig(
        sources=(SourceConfig("jsonl", str(corpus)),),
        output_dir=str(workdir / "dialogues"),
        report_path=str(workdir / "reports" / "ingest_quality.json"),
    )
    cfg = replace(cfg, quality=replace(cfg.quality, batch_conversations=2000))
    started = time.perf_counter()
    result, _ = ingest(cfg)
    seconds = time.perf_counter() - started
    return {
        "sessions": result.sessions,
        "conversations": result.conversations_kept,
        "turns": result.turns,
        "corpus_mb": round(corpus.stat().st_size / 2**20, 1),
        "generate_seconds": round(generate_seconds, 2),
        "ingest_seconds": round(seconds, 2),
        "sessions_per_second": round(result.sessions / seconds, 1),
        "peak_rss_mb_before_ingest": round(rss_before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_size(sessions: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="memforge-bench-") as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(sessions), "--workdir", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"worker for {sessions} sessions failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="print only; do not update results/ingest.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.workdir)))
        return
    rows = []
    for sessions in args.sessions:
        row = run_size(sessions)
        rows.append(row)
        print(json.dumps(row))
    record = {
        "command": "python benchmarks/bench_ingest.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rows": rows,
    }
    by_size = {row["sessions"]: row for row in rows}
    if 10_000 in by_size and 100_000 in by_size:
        big, small = by_size[100_000], by_size[10_000]
        record["targets"] = {
            "1e5_sessions_under_60_s": big["ingest_seconds"] < 60,
            "1e5_peak_rss_under_2_gb": big["peak_rss_mb"] < 2048,
            "peak_rss_growth_1e4_to_1e5": round(big["peak_rss_mb"] / small["peak_rss_mb"], 2),
            "peak_rss_growth_under_2x": big["peak_rss_mb"] / small["peak_rss_mb"] < 2,
        }
        print(json.dumps(record["targets"]))
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
