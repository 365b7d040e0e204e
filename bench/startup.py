"""Start-up: wall time of the fast commands against ``python -c "import dspy"``, in the same run.

``bae --help``, ``bae inspect compiled`` and ``bae stats`` must not import DSPy, so they
should cost a fraction of importing it. Each round runs every command once, in a rotating
order, as a fresh process of the real ``bae`` entry point; the figure for a command is the
median over rounds of its time over ``import dspy``'s time in the same round. ``bae stats``
reads a run log written beforehand by a real ``bae run --batch``. Floors run alongside: an
empty interpreter; a one-command Typer app (``bench/typer_floor.py``) running its command and
showing its ``--help``, what any Typer CLI pays before its own code; and importing the example
graph (as a module, like ``inspect`` does), which ``inspect`` must do to check its schemas.

Targets: ``bae --help`` at most 0.05 s over the Typer floor's ``--help`` (median of the
per-round differences); ``inspect``'s own share, its time minus the graph import's over
``import dspy``'s, at most 0.10; ``stats`` at most 0.25 of ``import dspy``.

Children may write bytecode caches (``__pycache__``, git-ignored) even if
``PYTHONDONTWRITEBYTECODE`` is set here, and one untimed round warms them: an installed
package has its ``.pyc`` files, so recompiling bae's sources on every start is not what a user
pays (site-packages, DSPy included, already has them).

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
    child_env,
    parse,
    parser,
    run,
    summary,
)
from bench.scripted import write_batch

ENV = {k: v for k, v in child_env().items() if k != "PYTHONDONTWRITEBYTECODE"}

TARGET = 0.25
HELP_OVER_FLOOR_S = 0.05
INSPECT_OWN_SHARE = 0.10
FLOOR = Path(__file__).with_name("typer_floor.py")
REFERENCE = "import dspy"
TYPER_HELP = "Typer floor --help"
GRAPH = "import the graph (examples/support_triage.py)"
HELP = "bae --help"
INSPECT = "bae inspect compiled"


def commands(log_db: Path) -> dict[str, list[str]]:
    """What is timed, by the name the table shows (the reference first)."""
    bae = bae_command()
    return {
        REFERENCE: [sys.executable, "-c", "import dspy"],
        "python (empty)": [sys.executable, "-c", "pass"],
        "Typer floor (bench/typer_floor.py)": [sys.executable, str(FLOOR), "stats", "--log-db", str(log_db)],
        TYPER_HELP: [sys.executable, str(FLOOR), "--help"],
        GRAPH: [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(EXAMPLE.parent)!r}); import {EXAMPLE.stem}",
        ],
        HELP: [*bae, "--help"],
        INSPECT: [*bae, "inspect", str(COMPILED)],
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
        for name in names:  # warm the bytecode caches: untimed
            run(cases[name], env=ENV).check()
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                walls[name].append(run(cases[name], env=ENV).check().wall_s)
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
        if name == "bae stats":
            report.target(f"{name} / {REFERENCE}", share, "<=", TARGET)
    help_over = statistics.median(h - f for h, f in zip(walls[HELP], walls[TYPER_HELP], strict=True))
    own = statistics.median((i - g) / d for i, g, d in zip(walls[INSPECT], walls[GRAPH], walls[REFERENCE], strict=True))
    report.figure("bae --help over the Typer floor --help (s)", help_over)
    report.figure("bae inspect own share (minus the graph import) / import dspy", own)
    report.target(f"{HELP} - {TYPER_HELP} (s)", help_over, "<=", HELP_OVER_FLOOR_S)
    report.target(f"({INSPECT} - {GRAPH}) / {REFERENCE}", own, "<=", INSPECT_OWN_SHARE)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
