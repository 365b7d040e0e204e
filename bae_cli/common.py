"""What every command shares: consoles, JSON output, and loading graphs and compiled dirs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bae.exceptions import BaeInputError
from bae.wording import score_change_text, score_text

if TYPE_CHECKING:
    from bae.loader import LoadedGraph

LOG_WIDTH = 200  # columns for output that is not a terminal (a CI log, a file, a pipe)


def _width(stream: Any) -> int | None:
    """The width a console renders at: ``$COLUMNS`` if set, the terminal's (None: Rich asks it), else
    ``LOG_WIDTH``. Rich falls back to 80 columns when stdout is not a terminal, which cut table cells
    (``optimi…``) and wrapped rows in CI logs; a log line has no width, so tables stay whole."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return None if stream.isatty() else LOG_WIDTH
    except (AttributeError, ValueError):  # a closed or replaced stream
        return LOG_WIDTH


# emoji=False: ":x:" in a node name or a message stays text (and Rich's emoji table is never loaded);
# soft_wrap: an error stays one greppable line
out = Console(highlight=False, emoji=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True, width=_width(sys.stderr))

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
LmOption = Annotated[
    str | None,
    typer.Option(
        "--lm",
        envvar="BAE_LM",
        help="LM to call: 'local' (embedded model, default), 'local:path.gguf', a LiteLLM model string "
        "such as 'openai/gpt-4o-mini', or 'module:factory' returning a DSPy LM. Also $BAE_LM.",
        show_default=False,
    ),
]


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def warn_stale(stale: set[tuple[str, str]]) -> None:
    """One line per compiled predictor that will not be used because its node changed since compile."""
    for node, kind in sorted(stale):
        warn(f"{node} ({kind}) changed since compile: using a naive predictor (stale)")


def interval_text(interval: list[float]) -> str:
    """``[0.190, 0.571]``: a score's 95% interval, as ``compile`` and ``eval`` print it."""
    return f"[{score_text(interval[0])}, {score_text(interval[1])}]"


def delta_text(delta: float, interval: list[float], label: str) -> str:
    """``v2 - v1: +0.095, 95% interval [-0.048, +0.238]: includes 0, ...``: a difference, its paired
    interval and whether the traces can tell the two apart at all."""
    low, high = interval
    verdict = (
        "includes 0: these traces cannot tell the two apart"
        if low <= 0 <= high
        else f"entirely {'above' if low > 0 else 'below'} 0"
    )
    bounds = f"[{score_change_text(low)}, {score_change_text(high)}]"
    return f"{label}: {score_change_text(delta)}, 95% interval {bounds}: {verdict}"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def graph_from(reference: str | None, manifest: dict[str, Any] | None, version_dir: Path | None = None) -> LoadedGraph:
    """The graph a command works on: the one named, else the one the manifest recorded at compile.

    A recorded file path is tried from the current directory, then from the project the
    compiled root sits in (``<project>/compiled/vN``), so artifacts work from either place.
    """
    from bae.loader import load_graph, split_reference  # imports the graph machinery: only when a graph is used

    if reference:
        return load_graph(reference)
    if manifest is None:
        raise BaeInputError(
            "no graph given: pass GRAPH (file.py[:Name]), or --compiled DIR to use the graph it was compiled from"
        )
    recorded = manifest.get("graph", {}).get("reference")
    if not recorded:
        raise BaeInputError("no graph given, and the compiled version records none: pass GRAPH (file.py[:Name])")
    target, attribute = split_reference(recorded)
    if target.endswith(".py") and not Path(target).exists() and version_dir is not None:
        beside = version_dir.resolve().parent.parent / target
        if beside.exists():
            return load_graph(f"{beside}:{attribute}" if attribute else str(beside))
    return load_graph(recorded)


class RichProgress:
    """A command's stages as Rich progress bars on stderr, so stdout stays clean for --json.

    The display starts with the first stage, so an input error found before any work (a bad
    dataset line, a bad flag value) stays the only line on stderr; a new stage fills the last bar.
    """

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: int | None = None

    def stage(self, name: str, total: int) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total)
        self.task = self.progress.add_task(name, total=total)

    def advance(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)


def confusion_tables(graph: Any, matrices: list[dict[str, Any]], joiner: str, title: str) -> list[Any]:
    """One table per choice predictor: gold answers in rows, every answer the node allows in columns
    (and ``error`` if a run failed there), each cell the counts of every matrix in order, joined."""
    from rich.table import Table

    from bae.node import spec_of
    from bae.scoring import FAILED

    tables = []
    for key in sorted({k for m in matrices for k in m}):
        cls = graph.node(key.rsplit(".", 1)[0])
        each = [m.get(key, {}) for m in matrices]
        golds = {want for matrix in each for want in matrix}
        seen = golds | {answer for matrix in each for row in matrix.values() for answer in row}
        order = list(spec_of(cls).choices) if cls is not None else []
        columns = order + [FAILED] * (FAILED in seen) + sorted(seen - {*order, FAILED})
        table = Table(title=f"{key}{escape(title)}", show_edge=False)
        table.add_column("gold \\ answer")
        for column in columns:
            table.add_column(column, justify="right")
        for want in (c for c in columns if c in golds):
            table.add_row(want, *(joiner.join(str(m.get(want, {}).get(got, 0)) for m in each) for got in columns))
        tables.append(table)
    return tables
