"""Whole-graph evaluation: run each dev trace's start node and compare with the gold trace.

This is the score recorded for a version: it measures what the LM delivers along the
whole route (right choices, right fields), not any single predictor in isolation.
Per-predictor scores and each choice predictor's confusion matrix fall out of the same
runs, so no extra LM calls are spent on them.

Which steps count. A gold step S -> T (S the node before, T the node after) is an *LM step*
when the LM produced it, read from the node specs the way ``Graph.run`` routes:

- S decides (a body of ``...`` with more than one option, an ``lm.decide`` call): the LM
  chose T and made T's generated fields. The step earns ``(choice + fields matched) /
  (1 + generated fields)``: the choice weighs as one field, and a wrong choice earns 0.
- S is routed to its only successor (a body of ``...``, one edge, ``lm.make``): the LM made
  T's generated fields; the step earns their mean match. When T has no generated fields no
  LM call happens, so it is not an LM step.
- S is custom logic (any other ``__call__`` body): not an LM step, whatever T holds. It
  earns nothing and costs nothing, right or wrong (logic that calls the LM itself is not
  seen here).
- The gold trace ends at a node that decides: the LM chose to end (``"None"``), one LM
  step that earns 1 when the run ended there too.

The fields a step made are judged by the metric (``bae.metrics``: the built-in one by field
type, or the user's ``--metric``); the choice part of a step is right or wrong.

A step earns only when the run took the gold route up to it: the node before and the node
after are the gold ones at the same position. Each step the run took past the gold trace's
end costs one step that earns 0. A trace's score is what its LM steps earned over their
number (extra steps included); a run that failed scores 0. A trace with no LM step and no
extra step has no score and is left out of the mean; the version's score is the mean over
the rest (0 when none is left), with a 95% interval from resampling the traces
(``bae.intervals``). Path accuracy is the share of runs whose node types match
the gold path exactly, custom steps included.

The confusion matrix of a choice predictor ``Node.choice`` counts, for every gold step from
that node which the run reached (same node at the same position), the gold answer against
the run's: a successor's name, ``"None"`` where the run ended there, ``"error"`` where the
run failed at that decision.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from bae.dataset import GoldTrace
from bae.exceptions import BaeError, BaeLMError
from bae.executor import Executor, InOrder, Work
from bae.graph import Graph
from bae.intervals import Interval, delta_interval, score_interval
from bae.lm import LM
from bae.metrics import Metric, made_score
from bae.node import Node, spec_of
from bae.observe import Observer
from bae.result import CallRecord, GraphResult
from bae.runlog import RecordRun, RunLogObserver, RunRecord

Key = tuple[str, str]  # (node name, "make" | "choice")


class Progress(Protocol):
    """Where long scoring work (compile's stages, eval's columns) reports itself; the CLI draws bars."""

    def stage(self, name: str, total: int) -> None: ...

    def advance(self) -> None: ...


class Quiet:
    """Progress reported nowhere: the library's default."""

    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass
ENDED = "None"  # a choice predictor's answer for ending the run
FAILED = "error"  # the run failed at this decision


def lm_steps(gold: Sequence[Node]) -> list[int]:
    """The positions ``i`` of the gold trace whose step ``gold[i - 1] -> gold[i]`` the LM produced,
    and ``len(gold)`` when the LM chose to end the run at the last node (see the module docstring)."""
    steps = []
    for i in range(1, len(gold)):
        before = spec_of(type(gold[i - 1]))
        if before.decides or (before.routed and spec_of(type(gold[i])).generated):
            steps.append(i)
    if gold and spec_of(type(gold[-1])).decides:
        steps.append(len(gold))
    return steps


@dataclass
class TraceScore:
    """One run against its gold trace. ``score`` is None when the trace has nothing the LM was
    scored on; ``steps`` is how many steps it was scored on (LM steps plus extra steps)."""

    score: float | None
    path_ok: bool
    per_predictor: dict[Key, float] = field(default_factory=dict)
    error: str | None = None
    steps: int = 0
    choices: list[tuple[str, str, str]] = field(default_factory=list)  # (node, gold answer, run's answer)


def _choices(gold: Sequence[Node], predicted: Sequence[Node], failed: bool) -> list[tuple[str, str, str]]:
    """Each gold decision the run reached, as (deciding node, gold answer, the run's answer)."""
    seen = []
    for j, node in enumerate(gold):
        if not spec_of(type(node)).decides or j >= len(predicted) or type(predicted[j]) is not type(node):
            continue
        want = type(gold[j + 1]).__name__ if j + 1 < len(gold) else ENDED
        got = type(predicted[j + 1]).__name__ if j + 1 < len(predicted) else FAILED if failed else ENDED
        seen.append((type(node).__name__, want, got))
    return seen


def score_trace(
    gold: Sequence[Node], predicted: Sequence[Node], error: str | None = None, metric: Metric | None = None
) -> TraceScore:
    """Score a run against its gold trace: only the steps the LM produced earn (module docstring).

    ``predicted`` is the run's trace; for a failed run (``error``) the trace up to the failure,
    which only feeds the confusion matrix: a failed run scores 0. ``metric`` judges the fields the
    LM made (``bae.metrics``; None: the built-in one).
    """
    choices = _choices(gold, predicted, failed=error is not None)
    scored = lm_steps(gold)
    extra = max(0, len(predicted) - len(gold))
    steps = len(scored) + extra
    if error is not None:
        return TraceScore(score=0.0 if steps else None, path_ok=False, error=error, steps=steps, choices=choices)
    per: dict[Key, float] = {}
    earned = 0.0
    for i in range(1, len(gold)):
        want = gold[i]
        got = predicted[i] if i < len(predicted) else None
        before = spec_of(type(gold[i - 1]))
        right_node = got is not None and type(got) is type(want) and type(predicted[i - 1]) is type(gold[i - 1])
        if before.decides:
            per[(type(gold[i - 1]).__name__, "choice")] = float(right_node)
        if i not in scored or not right_node:
            continue
        assert got is not None  # right_node
        fields = len(spec_of(type(want)).generated)
        match = made_score(metric, want, got) if fields else 1.0
        if fields:
            per[(type(want).__name__, "make")] = match
        earned += (1 + match * fields) / (1 + fields) if before.decides else match
    last = len(gold) - 1
    if len(gold) in scored and len(predicted) > last and type(predicted[last]) is type(gold[last]):
        ended = float(len(predicted) == len(gold))
        per[(type(gold[last]).__name__, "choice")] = ended
        earned += ended
    paths_equal = [type(n) for n in gold] == [type(n) for n in predicted]
    score = earned / steps if steps else None
    return TraceScore(score=score, path_ok=paths_equal, per_predictor=per, steps=steps, choices=choices)


@dataclass
class GraphScore:
    """Mean trace score and its 95% interval, path accuracy, per-predictor means, choice confusion
    matrices, failed runs.

    ``confusion`` maps ``"Node.choice"`` to gold answer to the run's answer to a count.
    """

    score: float
    path_accuracy: float
    per_predictor: dict[Key, float]
    errors: int
    traces: int
    confusion: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    interval: Interval = field(default_factory=lambda: Interval(0.0, 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4),
            "score_interval": self.interval.as_list(),
            "path_accuracy": round(self.path_accuracy, 4),
            "errors": self.errors,
            "traces": self.traces,
            "per_predictor": {f"{n}.{k}": round(v, 4) for (n, k), v in sorted(self.per_predictor.items())},
            "confusion": self.confusion,
        }


def confusion_matrices(graph: Graph, results: Sequence[TraceScore]) -> dict[str, dict[str, dict[str, int]]]:
    """Count the runs' decisions per choice predictor, rows and columns in the node's answer order
    (successors, ``"None"``, then ``"error"``); only answers that occurred are listed."""
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for result in results:
        for node, want, got in result.choices:
            counts[node][want][got] += 1
    matrices: dict[str, dict[str, dict[str, int]]] = {}
    for node in sorted(counts):
        cls = graph.node(node)
        order = [*spec_of(cls).choices, FAILED] if cls is not None else []

        def rank(answer: str, order: list[str] = order) -> tuple[int, str]:
            return (order.index(answer) if answer in order else len(order), answer)

        rows = counts[node]
        matrices[f"{node}.choice"] = {
            want: {got: rows[want][got] for got in sorted(rows[want], key=rank)} for want in sorted(rows, key=rank)
        }
    return matrices


@dataclass
class TraceRun:
    """One gold trace's start node run through the graph: what the run did, and its score.

    ``predicted`` is the run's trace (for a failed run: up to the failure); ``calls`` its LM calls;
    ``record`` what the run log keeps of it; ``lm_failed`` when the LM was unavailable, which stops scoring.
    """

    gold: GoldTrace
    predicted: list[Node]
    scored: TraceScore
    calls: list[CallRecord] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_s: float = 0.0
    record: RunRecord | None = None
    lm_failed: bool = False

    @property
    def failing(self) -> bool:
        """The run failed, left the gold path, or lost credit on an LM step."""
        score = self.scored.score
        return self.scored.error is not None or not self.scored.path_ok or (score is not None and score < 1.0)


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C while traces were running: ``finished`` holds the runs that had completed, in dataset order;
    ``bae.evaluate`` adds ``evaluation``, everything it had finished."""

    def __init__(self, finished: list[TraceRun], evaluation: Any = None) -> None:
        super().__init__()
        self.finished = finished
        self.evaluation = evaluation


def run_trace(
    graph: Graph,
    trace: GoldTrace,
    lm: LM,
    deps: dict[str, Any],
    max_steps: int = 100,
    observers: Sequence[Observer] = (),
    metric: Metric | None = None,
) -> TraceRun:
    """Run one trace's start node through ``lm`` and score the run against the trace. A run that fails scores
    0; one the LM failed is marked ``lm_failed`` (``run_traces`` stops there). A ``metric`` that fails raises."""
    error: BaeError | None = None
    result: GraphResult | None
    ended = RecordRun()
    began = time.perf_counter()
    try:
        result = graph.run(
            trace.nodes[0].model_copy(), lm=lm, max_steps=max_steps, observers=(*observers, ended), **deps
        )
    except BaeError as exc:
        error, result = exc, exc.result
    predicted = list(result.trace) if result is not None else []
    scored = score_trace(trace.nodes, predicted, error.message if error is not None else None, metric)
    calls = list(result.calls) if result is not None else []
    record = ended.record
    started_at = record.started_at if record is not None else datetime.now(UTC)
    return TraceRun(
        trace, predicted, scored, calls, started_at, time.perf_counter() - began, record, isinstance(error, BaeLMError)
    )


def run_traces(
    work: Work[GoldTrace, TraceRun],
    traces: Sequence[GoldTrace],
    executor: Executor,
    done: Callable[[TraceRun], None] | None = None,
    log: RunLogObserver | None = None,
) -> list[TraceRun]:
    """Run ``work`` (``run_trace`` for each trace, opened once per worker) over ``traces``; the runs in dataset
    order. ``done`` sees each run as it finishes; ``log`` gets every run's record, in dataset order.

    An LM that is unavailable stops the evaluation with its ``BaeLMError`` (that run logged first), and so does
    a ``metric`` that fails. Ctrl-C raises ``EvaluationInterrupted`` with the finished runs.
    """
    ordered = InOrder[TraceRun](
        lambda runs: log.log([run.record for run in runs if run.record is not None]) if log is not None else None
    )

    def finished(index: int, run: TraceRun) -> None:
        run.gold = traces[index]  # this process's own trace (a worker process sends back a copy)
        ordered.add(index, run)
        if run.lm_failed:
            ordered.finish()
            raise BaeLMError(run.scored.error or "the LM is unavailable")
        if done is not None:
            done(run)

    try:
        results = executor.map(work, traces, finished)
    finally:
        ordered.finish()
    if results.interrupted:
        raise EvaluationInterrupted(results.finished)
    return results.finished


def summarize(graph: Graph, results: Sequence[TraceScore]) -> GraphScore:
    """The version's figures from its scored runs: the mean score over the traces that have one, path
    accuracy, per-predictor means, failed runs and the choice confusion matrices."""
    sums: dict[Key, list[float]] = defaultdict(list)
    for result in results:
        for key, value in result.per_predictor.items():
            sums[key].append(value)
    scores = [r.score for r in results if r.score is not None]
    return GraphScore(
        score=sum(scores) / len(scores) if scores else 0.0,
        path_accuracy=sum(r.path_ok for r in results) / max(1, len(results)),
        per_predictor={key: sum(v) / len(v) for key, v in sums.items()},
        errors=sum(r.error is not None for r in results),
        traces=len(results),
        confusion=confusion_matrices(graph, results),
        interval=score_interval([r.score for r in results]),
    )


def delta_of(first: Sequence[TraceRun], second: Sequence[TraceRun]) -> Interval:
    """The 95% interval of the second runs' score minus the first's, paired over the gold traces both ran."""
    theirs = {id(run.gold): run.scored.score for run in second}
    both = [(run.scored.score, theirs[id(run.gold)]) for run in first if id(run.gold) in theirs]
    return delta_interval([a for a, _ in both], [b for _, b in both])

