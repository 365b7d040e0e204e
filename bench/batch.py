"""Batch throughput: ``bae run --batch`` over 200 tickets with an LM that takes 50 ms a call, at several concurrencies.

Each concurrency level is its own ``bae run --batch`` process (the real CLI, the committed
compiled version, a run log), so its peak memory is its own (``wait4``). Throughput is
taken from the run log bae writes: runs over the span from the first run's start to the
last run's end, so process start-up and loading are not counted against it. Efficiency
is the rate over the ideal, concurrency x the sequential rate (concurrency 1, same run).
With n equal runs, c at a time, no scheduler can beat n / (c x ceil(n / c)): the
"bound" column. The results file also has each level's CPU time per run: the process's
CPU time less that of a one-ticket batch (start-up, loading), over the runs; a rough
figure (start-up varies by a few hundred ms), but it shows what one process can do, since
the Python part of that CPU time holds the GIL. Target: efficiency at least 0.8 at concurrency 32.

    python -m bench.batch [--smoke] [--out DIR]
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bae.runlog import RunLog
from bench.common import COMPILED, EXAMPLE, SCRIPTED, Report, bae_command, parse, parser, run, summary
from bench.scripted import SLOW_CALL_S, write_batch

TARGET = 0.8
TARGET_AT = 32


def run_level(folder: Path, batch: Path, concurrency: int, lm: str, tag: str) -> dict[str, Any]:
    """One ``bae run --batch`` process: runs/s from its run log, its wall time and peak RSS."""
    log_db = folder / f"runs-{tag}.db"
    proc = run(
        [*bae_command(), "run", str(EXAMPLE), "--compiled", str(COMPILED), "--batch", str(batch),
         "--concurrency", str(concurrency), "--lm", lm, "--log-db", str(log_db)]
    ).check()  # fmt: skip
    runs = RunLog(log_db, create=False).runs()
    if any(r.status != "ok" for r in runs):
        raise RuntimeError(f"concurrency {concurrency}: not every run succeeded")
    sources = Counter(call.source for r in runs for call in r.calls)  # what ran: compiled or naive predictors
    first = min(r.started_at.timestamp() for r in runs)
    last = max(r.started_at.timestamp() + r.duration_s for r in runs)
    return {
        "runs": len(runs),
        "span_s": last - first,
        "runs_per_s": len(runs) / (last - first),
        "process_wall_s": proc.wall_s,
        "process_cpu_s": proc.cpu_s,
        "max_rss_mb": proc.max_rss_mb,
        "ran": {source: sources[source] for source in ("optimized", "naive", "stale")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("batch", __doc__), argv)
    inputs, levels, rounds = (6, (1, 3), 1) if args.smoke else (200, (1, 8, 32, 64), 3)
    lm = f"{SCRIPTED}:slow"
    measured: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    with tempfile.TemporaryDirectory(prefix="bae-bench-") as tmp:
        folder = Path(tmp)
        batch = write_batch(folder / "tickets.jsonl", inputs)
        one = write_batch(folder / "one.jsonl", 1)
        startup: list[float] = []
        for r in range(rounds):
            startup.append(run_level(folder, one, 1, lm, f"startup-{r}")["process_cpu_s"])
            for c in levels:
                measured[c].append(run_level(folder, batch, c, lm, f"{c}-{r}"))
    base_cpu = statistics.median(startup)
    sequential = statistics.median(m["runs_per_s"] for m in measured[levels[0]])
    report = Report(
        "batch",
        args,
        parameters={"inputs": inputs, "concurrency": list(levels), "rounds": rounds, "lm_call_s": SLOW_CALL_S,
                    "lm": "bench/scripted.py:slow", "lm_calls_per_run": 2, "compiled": "compiled (active)"},
        columns=["concurrency", "runs/s", "ideal runs/s", "efficiency", "bound", "peak RSS MB"],
    )  # fmt: skip
    for c in levels:
        rate = statistics.median(m["runs_per_s"] for m in measured[c])
        efficiency = rate / (c * sequential)
        bound = inputs / (c * math.ceil(inputs / c))
        rss = max(m["max_rss_mb"] for m in measured[c])
        cpu = statistics.median((m["process_cpu_s"] - base_cpu) / (inputs - 1) for m in measured[c])
        report.figure(
            f"concurrency_{c}",
            {
                "runs_per_s": summary([m["runs_per_s"] for m in measured[c]]),
                "efficiency": efficiency,
                "bound": bound,
                "max_rss_mb": rss,
                "cpu_s_per_run": cpu,
                "process_wall_s": summary([m["process_wall_s"] for m in measured[c]]),
                "ran": {k: sum(m["ran"][k] for m in measured[c]) for k in measured[c][0]["ran"]},
            },
        )
        report.row([c, f"{rate:.1f}", f"{c * sequential:.1f}", f"{efficiency:.2f}", f"{bound:.2f}", f"{rss:.0f}"])
        if c == TARGET_AT:
            report.target(f"efficiency at concurrency {c}", efficiency, ">=", TARGET)
    report.figure("startup_cpu_s", base_cpu)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
