"""What ``bae.evaluate`` returns: each version's column of figures on one dataset, the runs behind them,
the failing traces side by side, and the gates' verdicts, as tables (the CLI) or JSON (``--json``).

The columns are in the order asked for, and every delta is against the first one (``delta``); the
scores and their intervals come from ``bae.scoring``, the verdicts from ``bae.gates``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bae.dataset import GoldTrace
from bae.metrics import BUILTIN
from bae.node import node_json, spec_of
from bae.recording import trace_steps
from bae.scoring import GraphScore, TraceRun, delta_of
from bae.usage import UsageCounter

if TYPE_CHECKING:
    from bae.gates import Gate
    from bae.graph import Graph

NAIVE = "naive"  # the column of the naive (zero-shot) graph, and its name as a --baseline
VERSION, NAIVE_ROLE, BASELINE = "version", "naive", "baseline"  # why a column is there


@dataclass
class Column:
    """One version (or the naive graph) evaluated on the dataset.

    ``runs`` are in dataset order; ``complete`` is False when Ctrl-C stopped its runs early, and then
    ``score`` covers the finished ones. ``recorded_score`` is the optimized dev score the version
    recorded at compile (None for the naive graph).
    """

    name: str
    role: str
    version_dir: Path | None
    score: GraphScore
    runs: list[TraceRun]
    recorded_score: float | None = None
    stale: list[str] = field(default_factory=list)
    complete: bool = True

    @property
    def usage(self) -> dict[str, int]:
        return UsageCounter(call for run in self.runs for call in run.calls).cost()


@dataclass
class Evaluation:
    """Every column's figures on one dataset, the runs behind them, and the gates' verdicts."""

    graph: str  # its reference
    structure: Graph = field(repr=False)  # the graph itself (confusion tables list every answer it allows)
    dataset: str
    dataset_sha256: str | None
    traces: list[GoldTrace]
    invalid: list[str]
    lm: str
    columns: list[Column]
    gates: list[Gate] = field(default_factory=list)
    interrupted: bool = False
    metric: str = BUILTIN  # the name of what judged the made fields

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    def column(self, name: str) -> Column:
        """The column named ``name`` (a version, or ``naive``)."""
        found = next((c for c in self.columns if c.name == name), None)
        if found is None:
            raise KeyError(f"no column {name!r}: the columns are {', '.join(c.name for c in self.columns)}")
        return found

    def delta(self, column: Column | str | None = None) -> dict[str, Any]:
        """Against the first column: every column's delta by name (``delta()``, what the CLI shows), or one
        column's (``delta("v2")``): score (with its paired 95% interval), path accuracy, and each predictor
        both have a score for."""
        if column is None:
            return {c.name: self.delta(c) for c in self.columns}
        if isinstance(column, str):
            column = self.column(column)
        first = self.columns[0].score
        per = column.score.per_predictor
        return {
            "score": round(column.score.score - first.score, 4),
            "score_interval": delta_of(self.columns[0].runs, column.runs).as_list(),
            "path_accuracy": round(column.score.path_accuracy - first.path_accuracy, 4),
            "per_predictor": {
                f"{n}.{k}": round(per[(n, k)] - first.per_predictor[(n, k)], 4)
                for (n, k) in sorted(per)
                if (n, k) in first.per_predictor
            },
        }

    def failing(self) -> list[tuple[GoldTrace, dict[str, TraceRun]]]:
        """Traces some column failed on (a failed run, another path, or lost credit), in dataset order,
        each with every column's run of it."""
        by_trace: dict[str, dict[str, TraceRun]] = {}
        for column in self.columns:
            for run in column.runs:
                by_trace.setdefault(run.gold.source, {})[column.name] = run
        return [
            (trace, by_trace[trace.source])
            for trace in self.traces
            if trace.source in by_trace and any(run.failing for run in by_trace[trace.source].values())
        ]

    def as_dict(self, show_failures: int | None = None) -> dict[str, Any]:
        """Everything as JSON: the columns (figures, deltas, confusion matrices), failing traces (all, or
        the first ``show_failures``) and the gates."""
        failing = self.failing()
        shown = failing if show_failures is None else failing[:show_failures]
        return {
            "graph": self.graph,
            "dataset": {
                "path": self.dataset,
                "sha256": self.dataset_sha256,
                "traces": len(self.traces),
                "invalid_skipped": len(self.invalid),
            },
            "lm": self.lm,
            "metric": self.metric,
            "columns": [
                {
                    "name": c.name,
                    "role": c.role,
                    "path": None if c.version_dir is None else str(c.version_dir),
                    "recorded_score": c.recorded_score,
                    **c.score.as_dict(),
                    "delta": self.delta(c),
                    "stale": c.stale,
                    "usage": c.usage,
                    "complete": c.complete,
                }
                for c in self.columns
            ],
            "failing": len(failing),
            "failures": [failure_dict(trace, runs) for trace, runs in shown],
            "gates": [gate.as_dict() for gate in self.gates],
            "passed": self.passed,
            "interrupted": self.interrupted,
            "invalid_lines": self.invalid,
        }

    def output_lines(self) -> list[dict[str, Any]]:
        """One record per trace and column, trace by trace: the run's trace in the dataset format (what
        ``bae run --record`` writes, so a line can be fixed by hand and given to ``bae compile``), with
        the column, the gold trace's ``file:line`` and the run's score."""
        lines = []
        for trace in self.traces:
            for column in self.columns:
                run = next((r for r in column.runs if r.gold.source == trace.source), None)
                if run is not None:
                    lines.append({"version": column.name, "source": trace.source, **run_dict(run, column.name)})
        return lines


def generated_fields(nodes: Sequence[Any]) -> list[dict[str, Any]]:
    """Each step after the start with the fields the LM generates there (what a failure is about; ``{}``
    where it generates none)."""
    shown = []
    for node in nodes[1:]:
        names = {f.name for f in spec_of(type(node)).generated}
        shown.append({"node": type(node).__name__, "fields": {k: v for k, v in node_json(node).items() if k in names}})
    return shown


def run_dict(run: TraceRun, version: str | None) -> dict[str, Any]:
    """A run's score and its trace, each LM-made step with its calls (``bae.recording``)."""
    score = run.scored.score
    return {
        "score": None if score is None else round(score, 4),
        "path_ok": run.scored.path_ok,
        "error": run.scored.error,
        "trace": trace_steps(run.predicted, run.calls, version),
    }


def failure_dict(trace: GoldTrace, runs: Mapping[str, TraceRun]) -> dict[str, Any]:
    return {
        "source": trace.source,
        "input": node_json(trace.nodes[0]),
        "gold": {"path": trace.path, "steps": generated_fields(trace.nodes)},  # steps: path[1:] with fields
        "runs": {
            name: {
                "path": [type(n).__name__ for n in run.predicted],
                "steps": generated_fields(run.predicted),
                "score": None if run.scored.score is None else round(run.scored.score, 4),
                "error": run.scored.error,
            }
            for name, run in runs.items()
        },
    }
