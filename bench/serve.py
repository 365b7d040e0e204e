"""Server throughput: ``bae serve --max-concurrency 16`` with an LM that takes 50 ms a call, driven over HTTP.

One real ``bae serve`` process (the committed compiled version, a run log) on a free
loopback port. Clients post tickets to ``/run`` with 1, 16 and 32 requests in flight,
interleaved round by round; a level's rate is requests over the wall time of its burst,
as a client sees it (HTTP, validation, the run, logging and JSON included). Efficiency
is the rate over the ideal, 16 x the one-at-a-time rate. At 32 in flight the server still
runs 16 at once and queues the rest, so the rate should hold, not grow. Target:
efficiency at least 0.8 at 16 in flight. A second server with an LM that answers at once
gives the ceiling: the most runs/s this machine's CPU lets one server process do.

    python -m bench.serve [--smoke] [--out DIR]
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import COMPILED, EXAMPLE, SCRIPTED, Report, bae_command, child_env, parse, parser, summary
from bench.scripted import SLOW_CALL_S, tickets

TARGET = 0.8


@contextmanager
def server(folder: Path, max_concurrency: int, lm: str) -> Iterator[tuple[str, int]]:
    """``bae serve`` on a free port until the block ends; yields its URL and process id."""
    log = folder / f"serve-{lm}.log"
    command = [*bae_command(), "serve", str(EXAMPLE), "--compiled", str(COMPILED), "--lm", f"{SCRIPTED}:{lm}",
               "--port", "0", "--max-concurrency", str(max_concurrency),
               "--log-db", str(folder / f"runs-{lm}.db")]  # fmt: skip
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env())
    try:
        yield wait_until_up(process, log), process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def wait_until_up(process: subprocess.Popen[bytes], log: Path) -> str:
    """The URL of a starting ``bae serve`` once ``/ready`` answers 200; fails with its log if it exits first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bae serve exited {process.returncode}:\n{log.read_text()[-2000:]}")
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            try:
                if httpx.get(found[1] + "/ready", timeout=1).status_code == 200:
                    return found[1]
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"bae serve did not come up:\n{log.read_text()[-2000:]}")


async def _burst(
    url: str, inputs: list[dict[str, str]], in_flight: int, ran: dict[str, int]
) -> tuple[float, list[float]]:
    """Post every input with ``in_flight`` requests open at a time; wall seconds and each request's latency.
    ``ran`` adds up the LM calls by source (optimized, naive, stale) that the answers report."""
    pending = iter(inputs)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for ticket in pending:
                began = time.perf_counter()
                response = await client.post("/run", json=ticket)
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise RuntimeError(f"/run answered {response.status_code}: {response.text[:300]}")
                for row in response.json()["usage"]:
                    for source in ran:
                        ran[source] += row[source]

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - began, latencies


def burst(url: str, inputs: list[dict[str, str]], in_flight: int) -> dict[str, Any]:
    ran = dict.fromkeys(("optimized", "naive", "stale"), 0)
    wall, latencies = asyncio.run(_burst(url, inputs, in_flight, ran))
    ordered = sorted(latencies)
    return {
        "requests": len(inputs),
        "wall_s": wall,
        "runs_per_s": len(inputs) / wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "ran": ran,
    }


def ran_in(bursts: list[dict[str, Any]]) -> dict[str, int]:
    """LM calls by source over ``bursts``: what a row measured, compiled predictors or naive ones."""
    return {source: sum(b["ran"][source] for b in bursts) for source in bursts[0]["ran"]}


def peak_rss_mb(pid: int) -> float | None:
    """The server's high-water resident memory so far (Linux ``VmHWM``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("serve", __doc__), argv)
    limit, levels, rounds = (4, (1, 4), 1) if args.smoke else (16, (1, 16, 32), 3)
    sizes = {1: 6, 4: 8} if args.smoke else {1: 40, 16: 320, 32: 320}
    measured: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
    ceiling: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bae-bench-") as tmp,
        server(Path(tmp), limit, "slow") as (url, pid),
        server(Path(tmp), limit, "instant") as (fast, _),
    ):
        for address in (url, fast):
            burst(address, tickets(limit), limit)  # warm-up: predictors built, connections open
        for r in range(rounds):
            for n in levels[r % len(levels) :] + levels[: r % len(levels)]:
                measured[n].append(burst(url, tickets(sizes[n]), n))
            ceiling.append(burst(fast, tickets(sizes[limit]), limit))
        rss = peak_rss_mb(pid)
    sequential = statistics.median(m["runs_per_s"] for m in measured[1])
    report = Report(
        "serve",
        args,
        parameters={"max_concurrency": limit, "in_flight": list(levels), "requests": sizes, "rounds": rounds,
                    "lm_call_s": SLOW_CALL_S, "lm": "bench/scripted.py:slow", "lm_calls_per_run": 2,
                    "compiled": "compiled (active)", "run_log": True},
        columns=["in flight", "runs/s", "ideal runs/s", "efficiency", "p50 latency", "p95 latency"],
    )  # fmt: skip
    for n in levels:
        rate = statistics.median(m["runs_per_s"] for m in measured[n])
        ideal = min(n, limit) * sequential
        report.figure(
            f"in_flight_{n}",
            {
                "runs_per_s": summary([m["runs_per_s"] for m in measured[n]]),
                "efficiency": rate / ideal,
                "p50_s": summary([m["p50_s"] for m in measured[n]]),
                "p95_s": summary([m["p95_s"] for m in measured[n]]),
                "ran": ran_in(measured[n]),
            },
        )
        p50 = statistics.median(m["p50_s"] for m in measured[n])
        p95 = statistics.median(m["p95_s"] for m in measured[n])
        report.row([n, f"{rate:.1f}", f"{ideal:.1f}", f"{rate / ideal:.2f}", f"{p50 * 1000:.0f} ms",
                    f"{p95 * 1000:.0f} ms"])  # fmt: skip
        if n == limit:
            report.target(f"efficiency at {n} in flight (--max-concurrency {limit})", rate / ideal, ">=", TARGET)
    top = statistics.median(m["runs_per_s"] for m in ceiling)
    report.figure("ceiling_instant_lm", {"runs_per_s": summary([m["runs_per_s"] for m in ceiling]),
                                         "ran": ran_in(ceiling)})  # fmt: skip
    report.row([f"{limit} (0 ms LM: CPU ceiling)", f"{top:.1f}", "-", "-",
                f"{statistics.median(m['p50_s'] for m in ceiling) * 1000:.0f} ms",
                f"{statistics.median(m['p95_s'] for m in ceiling) * 1000:.0f} ms"])  # fmt: skip
    report.figure("server_peak_rss_mb", rss)
    report.note(f"server peak RSS {rss:.0f} MB" if rss else "server peak RSS unavailable")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
