"""``evaluate``: score compiled versions, and the naive graph, on any dataset of gold traces.

A version's recorded score was measured once, at compile, on its own dev split. This answers
the questions that come after: does v3 beat v2 on a held-out set, did last week's recorded
traffic get worse under the new version, is the active version still above 0.8 on
``golden.jsonl``. Each version is one *column*: every trace's start node is run through the
graph with that version's predictors and scored exactly as ``bae compile`` scores dev
(``bae.scoring``: one scoring path, judged by the same metric), so the numbers compare with the
recorded ones. Each score carries a 95% interval, each delta a paired one (``bae.intervals``).

Columns are the versions asked for (the active one by default), then the naive graph with
``naive=True``, then the ``baseline`` if it was not already among them. Deltas are against the
first column, and the gates judge it: ``min_score`` every version asked for must reach (not
the naive graph, nor a baseline evaluated only for comparison), ``baseline``/``max_drop`` how
far the first may fall below the baseline on this dataset.

Everything that can be wrong with the input (graph, dataset lines, versions, artifacts) fails
before the LM is built or called. Runs can go to a run log as ``eval`` runs, which production
figures (``bae stats``) leave out. DSPy is imported only when ``evaluate`` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bae import artifacts
from bae.dataset import Dataset, GoldTrace, load_dataset
from bae.exceptions import BaeArtifactError, BaeInputError
from bae.graph import Graph
from bae.loader import LoadedGraph, load_function, load_graph
from bae.metrics import BUILTIN, Metric, check_metric, metric_name
from bae.node import spec_of
from bae.scoring import EvaluationInterrupted, GraphScore, TraceRun, delta_of, run_traces, summarize
from bae.usage import lm_usage
from bae.wording import score_text

if TYPE_CHECKING:
    import dspy

    from bae.optimized_lm import LoadedVersion
    from bae.runlog import RunLog

logger = logging.getLogger("bae")

NAIVE = "naive"  # the column of the naive (zero-shot) graph, and its name as a --baseline
VERSION, NAIVE_ROLE, BASELINE = "version", "naive", "baseline"  # why a column is there
TOLERANCE = 1e-9  # scores are means of floats: 0.8 must reach 0.8


class Progress(Protocol):
    """Where ``evaluate`` reports each column's runs; the CLI draws a bar, the library stays quiet."""

    def stage(self, name: str, total: int) -> None: ...

    def advance(self) -> None: ...


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
        return lm_usage(call for run in self.runs for call in run.calls)


@dataclass
class Gate:
    """One CI check on the result: ``min-score`` (a version against a threshold) or ``baseline``."""

    gate: str
    version: str
    score: float
    threshold: float
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "version": self.version,
            "score": round(self.score, 4),
            "threshold": round(self.threshold, 4),
            "passed": self.passed,
            "message": self.message,
        }


@dataclass
class Evaluation:
    """Every column's figures on one dataset, the runs behind them, and the gates' verdicts."""

    graph: str
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
                    lines.append({"version": column.name, "source": trace.source, **run_dict(run)})
        return lines


def steps_json(nodes: Sequence[Any]) -> list[dict[str, Any]]:
    """Nodes as dataset steps: ``{"node": name, "fields": {...}}`` (``Bind`` services left out)."""
    from bae.runner import node_json

    return [{"node": type(n).__name__, "fields": node_json(n)} for n in nodes]


def generated_fields(nodes: Sequence[Any]) -> list[dict[str, Any]]:
    """Each step after the start with the fields the LM generates there (what a failure is about; ``{}``
    where it generates none)."""
    from bae.runner import node_json

    shown = []
    for node in nodes[1:]:
        names = {f.name for f in spec_of(type(node)).generated}
        shown.append({"node": type(node).__name__, "fields": {k: v for k, v in node_json(node).items() if k in names}})
    return shown


def run_dict(run: TraceRun) -> dict[str, Any]:
    score = run.scored.score
    return {
        "score": None if score is None else round(score, 4),
        "path_ok": run.scored.path_ok,
        "error": run.scored.error,
        "trace": steps_json(run.predicted),
    }


def failure_dict(trace: GoldTrace, runs: Mapping[str, TraceRun]) -> dict[str, Any]:
    from bae.runner import node_json

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


# -- what to evaluate --------------------------------------------------------------------------
@dataclass
class _Plan:
    name: str
    role: str
    version_dir: Path | None


def _root_of(compiled: Path) -> Path:
    """The compiled root ``--version`` names are looked up in: ``compiled``, or the root a version dir is in."""
    if not compiled.exists():
        raise BaeArtifactError(
            f"compiled directory not found: {compiled}: check the path, or compile with `bae compile GRAPH`"
        )
    if (compiled / artifacts.MANIFEST).is_file() and not (compiled / artifacts.VERSIONS).is_file():
        return compiled.parent
    return compiled


def _version_dir(root: Path, name: str) -> Path:
    path = root / name
    if artifacts.version_number(name) is None or not (path / artifacts.MANIFEST).is_file():
        listed = artifacts.existing_versions(root)
        raise BaeArtifactError(f"no version {name!r} in {root}: evaluate one of {', '.join([*listed, NAIVE])}")
    return path


def plan_columns(
    compiled: Path | None, versions: Sequence[str] = (), naive: bool = False, baseline: str | None = None
) -> list[_Plan]:
    """The columns in order: the versions asked for (default: the active one), the naive graph, the baseline."""
    if compiled is None:
        if versions or (baseline not in (None, NAIVE)):
            flag = "--version" if versions else "--baseline"
            raise BaeInputError(f"{flag} needs --compiled DIR: the compiled root the versions are in")
        plans = [_Plan(NAIVE, VERSION, None)]
    elif versions:
        root = _root_of(compiled)
        seen = list(dict.fromkeys(versions))
        plans = [_Plan(name, VERSION, None if name == NAIVE else _version_dir(root, name)) for name in seen]
    else:
        version_dir = artifacts.resolve_version_dir(compiled)
        plans = [_Plan(version_dir.name, VERSION, version_dir)]
    names = [p.name for p in plans]
    if naive and NAIVE not in names:
        plans.append(_Plan(NAIVE, NAIVE_ROLE, None))
        names.append(NAIVE)
    if baseline is not None and baseline not in names:
        baseline_dir = None if baseline == NAIVE else _version_dir(_root_of(compiled or Path(".")), baseline)
        plans.append(_Plan(baseline, BASELINE, baseline_dir))
    return plans


# -- gates -------------------------------------------------------------------------------------
def judge(
    columns: Sequence[Column], min_score: float | None, baseline: str | None, max_drop: float | None
) -> list[Gate]:
    """``min_score``: each version asked for reaches it. ``baseline``: the first column scores at most
    ``max_drop`` (default 0) below the baseline's column."""
    gates = []
    if min_score is not None:
        for column in (c for c in columns if c.role == VERSION):
            score = column.score.score
            passed = score >= min_score - TOLERANCE
            verdict = "reaches" if passed else f"{score_text(min_score - score)} below"
            message = f"{column.name} scored {score_text(score)}: {verdict} --min-score {min_score:g}"
            gates.append(Gate("min-score", column.name, score, min_score, passed, message))
    if baseline is not None:
        first = columns[0]
        base = next(c for c in columns if c.name == baseline)
        allowed = max_drop or 0.0
        drop = base.score.score - first.score.score
        passed = drop <= allowed + TOLERANCE
        how = f"{score_text(drop)} below" if drop > 0 else f"{score_text(-drop)} above" if drop < 0 else "level with"
        message = (
            f"{first.name} scored {score_text(first.score.score)}, {how} baseline {baseline} "
            f"({score_text(base.score.score)}): --max-drop allows {allowed:g}"
        )
        gates.append(Gate("baseline", first.name, first.score.score, base.score.score - allowed, passed, message))
    return gates


# -- evaluate ----------------------------------------------------------------------------------
def _loaded(graph: Graph | LoadedGraph | str, deps: Mapping[str, Any] | None) -> LoadedGraph:
    if isinstance(graph, str):
        loaded = load_graph(graph)
    elif isinstance(graph, LoadedGraph):
        loaded = graph
    elif isinstance(graph, Graph):
        loaded = LoadedGraph(graph=graph, reference=f"{graph.start.__module__}:{graph.start.__name__}")
    else:
        raise BaeInputError(f"evaluate() needs a Graph, a LoadedGraph or a graph reference, got {type(graph).__name__}")
    if deps:
        services = [*loaded.services, *deps.values()]
        loaded = LoadedGraph(graph=loaded.graph, reference=loaded.reference, services=services)
    return loaded


def _dataset(dataset: str | Path | Dataset | Sequence[GoldTrace], graph: Graph, strict: bool) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str | Path):
        return load_dataset(Path(dataset), graph, strict=strict)
    traces = list(dataset)
    if not traces:
        raise BaeInputError("the dataset has no traces: give gold traces")
    return Dataset(path=Path("<traces>"), traces=traces, invalid=[], sha256="")


def _warn_before_running(versions: Mapping[str, LoadedVersion], metric: str, warn: Callable[[str], None]) -> None:
    """Said before the LM is built, so it is known before minutes of runs: a version's stale predictors,
    and a version whose recorded score another metric judged."""
    for name, version in versions.items():
        for node, kind in sorted(version.stale):
            warn(f"{name}: {node} ({kind}) changed since compile: using a naive predictor (stale)")
        recorded_with = (version.manifest.get("scores") or {}).get("metric", BUILTIN)
        if recorded_with != metric:
            warn(
                f"{name} recorded its dev score with metric {recorded_with}, this evaluation judges with "
                f"{metric}: the two do not compare"
            )


def _recorded_score(version: LoadedVersion | None) -> float | None:
    """The optimized dev score ``version`` recorded at compile; None for the naive graph."""
    if version is None:
        return None
    score = (version.manifest.get("scores") or {}).get("optimized")
    return float(score) if isinstance(score, int | float) else None


def evaluate(
    graph: Graph | LoadedGraph | str,
    dataset: str | Path | Dataset | Sequence[GoldTrace],
    *,
    lm: dspy.BaseLM | str | None = None,
    metric: Metric | str | None = None,
    compiled: str | Path | None = None,
    versions: Sequence[str] = (),
    naive: bool = False,
    baseline: str | None = None,
    min_score: float | None = None,
    max_drop: float | None = None,
    threads: int = 4,
    max_steps: int = 100,
    strict: bool = True,
    deps: Mapping[str, Any] | None = None,
    log: RunLog | str | Path | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] = logger.warning,
) -> Evaluation:
    """Score versions of ``graph`` side by side on ``dataset`` (a JSONL path, a ``Dataset`` or gold traces).

    ``compiled`` is a compiled root or version dir: its active version is evaluated, or each of
    ``versions`` (names in that root, or ``"naive"``); without it, the naive graph. ``naive`` adds the naive graph,
    ``baseline`` (a version name or ``"naive"``) is evaluated too if it is not already. ``lm`` is a DSPy
    LM or an ``--lm`` spec (default: ``$BAE_LM``, else the embedded model). ``metric`` judges the fields
    the LM made, a function in DSPy's form or a ``module:function`` reference (default: the built-in
    one, see ``bae.metrics``); it is the metric of every score, and so of the gates. Gates (``min_score``,
    ``baseline`` with ``max_drop``) are judged into ``Evaluation.gates``; nothing is raised for them.

    Raises ``BaeInputError`` (bad graph, dataset or arguments) and ``BaeArtifactError`` (a version
    missing, tampered or unreadable) before any LM call; ``BaeLMError`` when the LM is unavailable;
    ``EvaluationInterrupted`` (a ``KeyboardInterrupt``) on Ctrl-C, its ``evaluation`` holding the
    columns and runs that finished.
    """
    from bae.lm_specs import lm_name, resolve_lm
    from bae.optimized_lm import OptimizedLM, load_optimized
    from bae.runlog import EVAL, RunLog, RunLogError

    if max_drop is not None and baseline is None:
        raise BaeInputError("--max-drop goes with --baseline vN: add the version to compare against")
    if max_drop is not None and max_drop < 0:
        raise BaeInputError(f"--max-drop must be 0 or more, got {max_drop:g}")
    loaded = _loaded(graph, deps)
    problems = loaded.graph.validate()
    if problems:
        listed = "; ".join(str(p) for p in problems)
        raise BaeInputError(f"graph {loaded.reference} is invalid: {listed}: fix it (`bae graph` shows its structure)")
    plans = plan_columns(None if compiled is None else Path(compiled), versions, naive, baseline)
    data = _dataset(dataset, loaded.graph, strict)
    judge_with = load_function(metric, "--metric") if isinstance(metric, str) else metric
    check_metric(judge_with, (node for trace in data.traces for node in trace.nodes[1:]))
    versions_loaded = {p.name: load_optimized(loaded.graph, p.version_dir) for p in plans if p.version_dir is not None}
    _warn_before_running(versions_loaded, metric_name(judge_with), warn)
    run_log = RunLog(log) if isinstance(log, str | Path) else log
    model = lm if lm is not None and not isinstance(lm, str) else resolve_lm(lm)
    model_name = lm_name(model)
    evaluation = Evaluation(
        graph=loaded.reference,
        dataset=str(data.path),
        dataset_sha256=data.sha256 or None,
        traces=data.traces,
        invalid=data.invalid,
        lm=model_name,
        columns=[],
        metric=metric_name(judge_with),
    )
    for plan in plans:
        loaded_version = versions_loaded.get(plan.name)
        backend = loaded_version.lm(lm=model) if loaded_version is not None else OptimizedLM(lm=model)

        def record(run: TraceRun, plan: _Plan = plan, version: LoadedVersion | None = loaded_version) -> None:
            if run_log is None:
                return
            try:
                run_log.log_run(
                    started_at=run.started_at,
                    duration_s=run.duration_s,
                    status="ok" if run.scored.error is None else "error",
                    error=run.scored.error,
                    graph=loaded.reference,
                    start_node=loaded.graph.start.__name__,
                    version=None if version is None else version.version,
                    compiled_dir=None if plan.version_dir is None else str(plan.version_dir),
                    lm=model_name,
                    calls=run.calls,
                    purpose=EVAL,
                )
            except RunLogError as exc:  # an evaluation that worked is not failed by its log
                warn(f"run not logged: {exc.message}")

        if progress is not None:
            progress.stage(f"evaluating {plan.name}", len(data.traces))
        try:
            runs = run_traces(
                loaded.graph,
                data.traces,
                backend,
                loaded.deps,
                threads,
                progress.advance if progress is not None else None,
                max_steps,
                record,
                judge_with,
            )
            complete = True
        except EvaluationInterrupted as exc:
            runs, complete = exc.finished, False
            evaluation.interrupted = True
        column = Column(
            name=plan.name,
            role=plan.role,
            version_dir=plan.version_dir,
            score=summarize(loaded.graph, [run.scored for run in runs]),
            runs=runs,
            recorded_score=_recorded_score(loaded_version),
            stale=[] if loaded_version is None else [f"{node}.{kind}" for node, kind in sorted(loaded_version.stale)],
            complete=complete,
        )
        evaluation.columns.append(column)
        if evaluation.interrupted:
            raise EvaluationInterrupted(column.runs, evaluation)
    evaluation.gates = judge(evaluation.columns, min_score, baseline, max_drop)
    return evaluation


__all__ = ["NAIVE", "Column", "Evaluation", "EvaluationInterrupted", "Gate", "evaluate"]
