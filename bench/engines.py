"""Threads against Ray: ``bae run --batch`` on ``--engine threads`` and ``--engine ray``, side by side in one run.

Two LMs: one that answers at once (each run is bae's and DSPy's CPU alone: one process is CPU-bound,
its GIL the limit) and one that takes 50 ms a call (a fast hosted model). For each, the same batch runs
as one threaded process (``--concurrency 64``) and on a local Ray with ``--workers 2`` (one worker
process per core, ``--concurrency 128`` in all), interleaved round by round, every run a real
``bae run --batch`` process. Two figures a row:

- **steady runs/s**, from the run log bae writes: runs over the span from the first run's start to the
  last run's end, so start-up is not counted against it;
- **fixed cost**: the process's wall time less the batch at its steady rate: for Ray, starting Ray, its
  worker processes (each imports bae and DSPy, opens the compiled version and builds its LM) and
  stopping it all. From the two, the batch size from which Ray finishes first (``pays from``).

Ray starts inside a network namespace with only loopback up (``bench.common.loopback_only``): this
script re-runs itself there, its Ray files under a temporary ``RAY_TMPDIR``. Target: on a machine where
one process is CPU-bound, Ray's 2 workers run at least 1.6x the threaded rate (instant LM).

    python -m bench.engines [--smoke] [--out DIR] [--inputs N] [--rounds N]
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bae.runlog import RunLog
from bench.common import (
    COMPILED,
    EXAMPLE,
    ROOT,
    SCRIPTED,
    Report,
    bae_command,
    child_env,
    interfaces_up,
    loopback_only,
    parse,
    parser,
    run,
    summary,
)
from bench.scripted import SLOW_CALL_S, write_batch

TARGET = 1.6
LMS = {"instant": "instant", f"{int(SLOW_CALL_S * 1000)} ms": "slow"}
ENGINES: dict[str, list[str]] = {
    "threads": ["--engine", "threads", "--concurrency", "64"],
    "ray": ["--engine", "ray", "--workers", "2", "--concurrency", "128"],
}


def run_batch(folder: Path, batch: Path, lm: str, engine: str, tag: str) -> dict[str, Any]:
    """One ``bae run --batch`` process: its steady rate from the run log, its wall and CPU time."""
    log_db = folder / f"runs-{tag}.db"
    proc = run(
        [*bae_command(), "run", str(EXAMPLE), "--compiled", str(COMPILED), "--batch", str(batch),
         "--lm", f"{SCRIPTED}:{lm}", "--log-db", str(log_db), "--output", str(folder / f"out-{tag}.jsonl"),
         *ENGINES[engine]],
        env=child_env(RAY_TMPDIR=str(folder / "ray")),
    ).check()  # fmt: skip
    runs = RunLog(log_db, create=False).runs()
    if len(runs) != len(batch.read_text().splitlines()) or any(r.status != "ok" for r in runs):
        raise RuntimeError(f"{engine}, {lm}: not every input ran once and succeeded")
    first = min(r.started_at.timestamp() for r in runs)
    last = max(r.started_at.timestamp() + r.duration_s for r in runs)
    rate = len(runs) / (last - first)
    return {
        "runs_per_s": rate,
        "wall_s": proc.wall_s,
        "fixed_s": proc.wall_s - len(runs) / rate,
        "cpu_s": proc.cpu_s,  # the process and the children it reaped (a local Ray's, when it stops them)
    }


def _burn(seconds: float, out: Any) -> None:
    began, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - began < seconds:
        pass
    out.put(time.process_time() - cpu)


def cpu_share(seconds: float) -> dict[str, float]:
    """The cores this benchmark can get right now with 1 and with 2 busy processes: on a machine shared with
    other jobs (and the kernel's autogroup scheduling) a second process may add nothing, and then no engine
    can use a second core; Ray's gain over threads needs one."""
    share = {}
    for busy in (1, 2):
        out: Any = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=_burn, args=(seconds, out)) for _ in range(busy)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        share[f"{busy} busy"] = round(sum(out.get() for _ in workers) / seconds, 2)
    return share


def pays_from(threads: dict[str, float], ray: dict[str, float]) -> float | None:
    """The batch size from which Ray's total time is the shorter: its extra fixed cost over what it saves a run."""
    saved = 1 / threads["runs_per_s"] - 1 / ray["runs_per_s"]
    return None if saved <= 0 else max(0.0, ray["fixed_s"] - threads["fixed_s"]) / saved


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser("engines", __doc__)
    ap.add_argument("--inputs", type=int, default=2000, help="Tickets in the batch (default 2000).")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds, each running every case once (default 2).")
    args = parse(ap, argv)
    if interfaces_up() != ["lo"]:  # Ray would use the machine's address: start it where only loopback exists
        command = loopback_only([sys.executable, "-m", "bench.engines", *args.argv])
        return subprocess.run(command, cwd=ROOT, env=child_env()).returncode
    inputs, rounds = (40, 1) if args.smoke else (args.inputs, args.rounds)
    lms = dict(list(LMS.items())[:1]) if args.smoke else LMS  # a smoke run starts Ray once
    measured: dict[tuple[str, str], list[dict[str, Any]]] = {(lm, e): [] for lm in lms for e in ENGINES}
    cores = cpu_share(0.5 if args.smoke else 3.0)
    folder = Path(tempfile.mkdtemp(prefix="bae-bench-"))
    try:
        batch = write_batch(folder / "tickets.jsonl", inputs)
        cases = list(measured)
        for r in range(rounds):
            for lm, engine in cases[r % len(cases) :] + cases[: r % len(cases)]:
                measured[lm, engine].append(run_batch(folder, batch, lms[lm], engine, f"{lms[lm]}-{engine}-{r}"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = Report(
        "engines",
        args,
        parameters={"inputs": inputs, "rounds": rounds, "engines": ENGINES, "lm": "bench/scripted.py",
                    "lm_calls_per_run": 2, "compiled": "compiled (active)"},
        columns=["LM", "engine", "steady runs/s", "ray / threads", "wall s", "fixed cost s", "pays from (inputs)"],
    )  # fmt: skip
    for lm in lms:
        medians = {
            engine: {key: statistics.median(m[key] for m in measured[lm, engine]) for key in measured[lm, engine][0]}
            for engine in ENGINES
        }
        ratio = medians["ray"]["runs_per_s"] / medians["threads"]["runs_per_s"]
        breakeven = pays_from(medians["threads"], medians["ray"])
        for engine in ENGINES:
            row = medians[engine]
            report.figure(
                f"{LMS[lm]}_{engine}",
                {key: summary([m[key] for m in measured[lm, engine]]) for key in measured[lm, engine][0]},
            )
            is_ray = engine == "ray"
            report.row([
                lm, engine, f"{row['runs_per_s']:.0f}", f"{ratio:.2f}" if is_ray else "1", f"{row['wall_s']:.1f}",
                f"{row['fixed_s']:.1f}", ("never" if breakeven is None else f"{breakeven:,.0f}") if is_ray else "",
            ])  # fmt: skip
        report.figure(f"{LMS[lm]}_ray_over_threads", ratio)
        report.figure(f"{LMS[lm]}_ray_pays_from_inputs", breakeven)
        if LMS[lm] == "instant":
            report.target("ray / threads steady runs/s, instant LM (CPU-bound)", ratio, ">=", TARGET)
    report.figure("cores_available", cores)
    report.note(
        f"cores this benchmark could get before it ran: {cores['1 busy']} with 1 busy process, "
        f"{cores['2 busy']} with 2 (of {os.cpu_count()})"
    )
    report.note(
        "fixed cost = wall time less the batch at its steady rate; on Ray it is start-up (Ray, then each worker "
        "imports bae and DSPy, opens the version, builds its LM) and shut-down"
    )
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
