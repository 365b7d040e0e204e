"""What every command shares: consoles, warnings, JSON output, scores with their intervals, confusion tables."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bae.wording import score_change_text, score_text

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


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


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
