"""Start-up: wall time of the fast commands against ``python -c "import dspy"``, in the same run.

``bae --help``, ``bae inspect compiled`` and ``bae stats`` must not import DSPy, so they
should cost a fraction of importing it. Each round runs every command once, in a rotating
order, as a fresh process of the real ``bae`` entry point; the figure for a command is the
median over rounds of its time over ``import dspy``'s time in the same round. ``bae stats``
reads a run log written beforehand by a real ``bae run --batch``. Three floors run alongside:
an empty interpreter, a one-command Typer app (``bench/typer_floor.py``), what any Typer CLI
pays before its own code, and importing the example graph, which ``inspect`` must do to check
its schemas (its Pydantic models are most of that). Target: ``inspect`` and ``stats`` at most 0.25 of
``import dspy``.

    python -m bench.startup [--smoke] [--out DIR]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    COMPILED,
    EXAMPLE,
    SCRIPTED,
    Report,
    bae_command,
    parse,
    parser,
    run,
    summary,
)
from bench.scripted import write_batch

TARGET = 0.25
FLOOR = Path(__file__).with_name("typer_floor.py")
REFERENCE = "import dspy"


def commands(log_db: Path) -> dict[str, list[str]]:
    """What is timed, by the name the table shows (the reference first)."""
    bae = bae_command()
    return {
        REFERENCE: [sys.executable, "-c", "import dspy"],
        "python (empty)": [sys.executable, "-c", "pass"],
        "Typer floor (bench/typer_floor.py)": [sys.executable, str(FLOOR), "stats", "--log-db", str(log_db)],
        "import the graph (examples/support_triage.py)": [sys.executable, str(EXAMPLE)],
        "bae --help": [*bae, "--help"],
        "bae inspect compiled": [*bae, "inspect", str(COMPILED)],
        "bae stats": [*bae, "stats", "--compiled", str(COMPILED), "--log-db", str(log_db)],
    }


def write_log(folder: Path, runs: int) -> Path:
    """A run log with ``runs`` runs of the example graph, written by ``bae run --batch``."""
    log_db = folder / "runs.db"
    batch = write_batch(folder / "tickets.jsonl", runs)
    lm = f"{SCRIPTED}:instant"
    run([*bae_command(), "run", str(EXAMPLE), "--compiled", str(COMPILED), "--batch", str(batch),
         "--lm", lm, "--log-db", str(log_db)]).check()  # fmt: skip
    return log_db


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("startup", __doc__), argv)
    rounds, logged = (1, 5) if args.smoke else (15, 200)
    with tempfile.TemporaryDirectory(prefix="bae-bench-") as tmp:
        cases = commands(write_log(Path(tmp), logged))
        names = list(cases)
        walls: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                walls[name].append(run(cases[name]).check().wall_s)
    report = Report(
        "startup",
        args,
        parameters={"rounds": rounds, "logged_runs": logged, "entry_point": " ".join(bae_command())},
        columns=["command", "median s", "min s", f"/ {REFERENCE}"],
    )
    for name in names:
        share = statistics.median(w / d for w, d in zip(walls[name], walls[REFERENCE], strict=True))
        report.figure(name, {"wall_s": summary(walls[name]), "share_of_import_dspy": share})
        report.row([name, f"{statistics.median(walls[name]):.3f}", f"{min(walls[name]):.3f}", f"{share:.2f}"])
        if name in ("bae inspect compiled", "bae stats"):
            report.target(f"{name} / {REFERENCE}", share, "<=", TARGET)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
