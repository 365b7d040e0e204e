"""``evaluate``: score compiled versions, and the naive graph, on any dataset of gold traces.

A version's recorded score was measured once, at compile, on its own dev split. This answers
the questions that come after: does v3 beat v2 on a held-out set, did last week's recorded
traffic get worse under the new version, is the active version still above 0.8 on
``golden.jsonl``. Each version is one *column*: every trace's start node is run through the
graph with that version's predictors and scored exactly as ``bae compile`` scores dev
(``bae.scoring``: one scoring path, judged by the same metric), so the numbers compare with the
recorded ones. Each score carries a 95% interval, each delta a paired one (``bae.intervals``).

Columns are the versions asked for (the active one by default), then the naive graph with
``naive=True``, then the ``baseline`` if it was not already among them, each opened once
(``bae.optimized_lm.open_version``; the naive graph is a version without compiled predictors).
Deltas are against the first column (``bae.evaluation``), and the gates judge it (``bae.gates``).

Everything that can be wrong with the input (graph, dataset lines, versions, artifacts) fails
before the LM is built or called. Runs can go to a run log as ``eval`` runs (its observer, as for
production runs), which production figures (``bae stats``) leave out. DSPy is imported only when
``evaluate`` runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bae.compiled_version import as_loaded
from bae.dataset import Dataset, GoldTrace, load_dataset
from bae.evaluation import BASELINE, NAIVE, NAIVE_ROLE, VERSION, Column, Evaluation
from bae.exceptions import BaeInputError
from bae.executor import Executor, Recipe, ThreadExecutor
from bae.gates import Gate, judge
from bae.graph import Graph
from bae.loader import LoadedGraph, load_function, split_reference
from bae.metrics import BUILTIN, Metric, check_metric, metric_name
from bae.scoring import EvaluationInterrupted, Progress, TraceRun, run_trace, run_traces, summarize

if TYPE_CHECKING:
    import dspy

    from bae.lm_specs import LMSettings
    from bae.optimized_lm import LoadedVersion
    from bae.runlog import RunLog
    from bae.runner import Runtime, RuntimeRecipe

logger = logging.getLogger("bae")


def open_columns(
    graph: LoadedGraph | None,
    compiled: Path | None,
    versions: Sequence[str],
    naive: bool,
    baseline: str | None,
    warn: Callable[[str], None],
) -> list[tuple[str, LoadedVersion]]:
    """(role, version) for each column in order: the versions asked for (default: the active one), the naive
    graph, the baseline; each opened once. Without ``graph``, the one the first version was compiled from."""
    from bae.optimized_lm import open_version

    if compiled is None and (versions or baseline not in (None, NAIVE)):
        flag = "--version" if versions else "--baseline"
        raise BaeInputError(f"{flag} needs --compiled DIR: the compiled root the versions are in")
    wanted: list[tuple[str, str | None]] = [(VERSION, name) for name in dict.fromkeys(versions)] or [(VERSION, None)]
    if naive and NAIVE not in versions:
        wanted.append((NAIVE_ROLE, NAIVE))
    if baseline is not None and baseline not in [*versions, *([NAIVE] if naive else [])]:
        wanted.append((BASELINE, baseline))
    opened: dict[str | None, LoadedVersion] = {}
    for _, name in sorted(wanted, key=lambda w: w[1] == NAIVE or compiled is None):  # compiled first: the graph
        if name == NAIVE or compiled is None:
            opened[name] = open_version(None, graph)
        else:
            opened[name] = open_version(compiled, graph, name, warn)
            graph = graph or opened[name].graph
    return [(role, opened[name]) for role, name in wanted]


def _with_deps(graph: Graph | LoadedGraph | str, deps: Mapping[str, Any] | None) -> LoadedGraph:
    loaded = as_loaded(graph)
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


def _warn_other_metric(columns: Sequence[tuple[str, LoadedVersion]], metric: str, warn: Callable[[str], None]) -> None:
    """Said before the LM is built: a version whose recorded score another metric judged does not compare."""
    for _, version in columns:
        recorded_with = (version.manifest.get("scores") or {}).get("metric", BUILTIN)
        if not version.is_naive and recorded_with != metric:
            warn(
                f"{version.name} recorded its dev score with metric {recorded_with}, this evaluation judges with "
                f"{metric}: the two do not compare"
            )


@dataclass(frozen=True)
class TraceWork(Recipe):
    """One column's runs for the batch executor: each gold trace's start node run and scored (``run_trace``).

    ``live`` is this process's runtime, graph (with any ``deps``) and metric, which a thread pool uses as they
    are; it is never pickled, so a worker process opens ``recipe`` and loads ``metric`` by its reference
    instead. Without a recipe (an LM, a metric or deps given as live objects) the work cannot leave the
    process."""

    recipe: RuntimeRecipe | None
    max_steps: int
    metric: str | None
    live: tuple[Runtime, LoadedGraph, Metric | None] | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        if self.recipe is None:
            raise BaeInputError(
                "this evaluation cannot run in other processes: give the LM and the metric as references "
                "(--lm, --metric), and services through the graph module's deps(), not as objects"
            )
        return {**self.__dict__, "live": None}

    def files(self) -> list[tuple[str, str]]:
        metric = [] if self.metric is None else [("--metric", split_reference(self.metric)[0])]
        return (self.recipe.files() if self.recipe is not None else []) + [m for m in metric if m[1].endswith(".py")]

    def open(self) -> Callable[[GoldTrace], TraceRun]:
        if self.live is not None:
            runtime, loaded, judge = self.live
        else:
            assert self.recipe is not None  # pickled only with one
            runtime = self.recipe.open()
            loaded, judge = runtime.graph, None if self.metric is None else load_function(self.metric, "--metric")
        backend, max_steps = runtime.backend, self.max_steps
        return lambda trace: run_trace(loaded.graph, trace, backend, loaded.deps, max_steps, (), judge)


def evaluate(
    graph: Graph | LoadedGraph | str | None,
    dataset: str | Path | Dataset | Sequence[GoldTrace],
    *,
    lm: dspy.BaseLM | str | None = None,
    settings: LMSettings | None = None,
    metric: Metric | str | None = None,
    compiled: str | Path | None = None,
    versions: Sequence[str] = (),
    naive: bool = False,
    baseline: str | None = None,
    min_score: float | None = None,
    max_drop: float | None = None,
    threads: int = 4,
    executor: Executor | None = None,
    max_steps: int = 100,
    strict: bool = True,
    deps: Mapping[str, Any] | None = None,
    log: RunLog | str | Path | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] = logger.warning,
) -> Evaluation:
    """Score versions of ``graph`` side by side on ``dataset`` (a JSONL path, a ``Dataset`` or gold traces).

    ``compiled`` is a compiled root or version dir: its active version is evaluated, or each of
    ``versions`` (names in that root, or ``"naive"``); without it, the naive graph. ``graph`` None is the
    graph the first version was compiled from. ``naive`` adds the naive graph,
    ``baseline`` (a version name or ``"naive"``) is evaluated too if it is not already. ``lm`` is a DSPy
    LM or an ``--lm`` spec bounded by ``settings`` (default: ``$BAE_LM``, else the embedded model). ``metric``
    judges the fields the LM made, a function in DSPy's form or a ``module:function`` reference (default: the
    built-in one, see ``bae.metrics``); it is the metric of every score, and so of the gates. Gates
    (``min_score``, ``baseline`` with ``max_drop``) are judged into ``Evaluation.gates``; nothing is raised for them.
    The runs go through ``executor`` (default: ``threads`` threads; ``bae.ray_executor.RayExecutor`` runs them
    on Ray, given the graph, ``lm`` and ``metric`` as references and no ``deps``).

    Raises ``BaeInputError`` (bad graph, dataset or arguments) and ``BaeArtifactError`` (a version
    missing, tampered or unreadable) before any LM call; ``BaeLMError`` when the LM is unavailable;
    ``EvaluationInterrupted`` (a ``KeyboardInterrupt``) on Ctrl-C, its ``evaluation`` holding the
    columns and runs that finished.
    """
    from bae.lm_specs import LMSettings, resolve_lm
    from bae.runlog import EVAL, RunLog, RunLogObserver
    from bae.runner import RuntimeRecipe, portable_reference, start_runtime

    if max_drop is not None and baseline is None:
        raise BaeInputError("--max-drop goes with --baseline vN: add the version to compare against")
    if max_drop is not None and max_drop < 0:
        raise BaeInputError(f"--max-drop must be 0 or more, got {max_drop:g}")
    given = None if graph is None else _with_deps(graph, deps)
    columns = open_columns(given, None if compiled is None else Path(compiled), versions, naive, baseline, warn)
    loaded = columns[0][1].graph
    problems = loaded.graph.validate()
    if problems:
        listed = "; ".join(str(p) for p in problems)
        raise BaeInputError(f"graph {loaded.reference} is invalid: {listed}: fix it (`bae graph` shows its structure)")
    data = _dataset(dataset, loaded.graph, strict)
    judge_with = load_function(metric, "--metric") if isinstance(metric, str) else metric
    check_metric(judge_with, (node for trace in data.traces for node in trace.nodes[1:]))
    _warn_other_metric(columns, metric_name(judge_with), warn)
    run_log = RunLog(log) if isinstance(log, str | Path) else log
    model = lm if lm is not None and not isinstance(lm, str) else resolve_lm(lm, settings or LMSettings())
    runtimes = [(role, start_runtime(version, model)) for role, version in columns]  # every column, one LM
    evaluation = Evaluation(
        graph=loaded.reference,
        structure=loaded.graph,
        dataset=str(data.path),
        dataset_sha256=data.sha256 or None,
        traces=data.traces,
        invalid=data.invalid,
        lm=runtimes[0][1].source.lm or "",
        columns=[],
        metric=metric_name(judge_with),
    )
    executor = executor or ThreadExecutor(threads)
    spec, reference = (lm if isinstance(lm, str) else None), (metric if isinstance(metric, str) else None)
    portable = (lm is None or spec is not None) and (metric is None or reference is not None) and not deps
    advance = None if progress is None else lambda _: progress.advance()
    for role, runtime in runtimes:
        version = runtime.version
        writer = None if run_log is None else RunLogObserver(run_log, runtime.source, EVAL, warn)
        recipe = RuntimeRecipe.of(runtime, spec, settings) if portable else None
        work = TraceWork(recipe, max_steps, reference and portable_reference(reference), (runtime, loaded, judge_with))
        if progress is not None:
            progress.stage(f"evaluating {version.name}", len(data.traces))
        try:
            runs = run_traces(work, data.traces, executor, advance, writer)
            complete = True
        except EvaluationInterrupted as exc:
            runs, complete = exc.finished, False
            evaluation.interrupted = True
        evaluation.columns.append(
            Column(
                name=version.name,
                role=role,
                version_dir=version.path,
                score=summarize(loaded.graph, [run.scored for run in runs]),
                runs=runs,
                recorded_score=None if version.compiled is None else version.compiled.recorded_score,
                stale=[f"{node}.{kind}" for node, kind in sorted(version.stale)],
                complete=complete,
            )
        )
        if evaluation.interrupted:
            raise EvaluationInterrupted(runs, evaluation)
    evaluation.gates = judge(evaluation.columns, min_score, baseline, max_drop)
    return evaluation


__all__ = ["NAIVE", "Column", "Evaluation", "EvaluationInterrupted", "Gate", "evaluate"]
