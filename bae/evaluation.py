"""Whole-graph evaluation: run each dev trace's start node and compare with the gold trace.

This is the score recorded for a version: it measures what users get (right route,
right fields), not any single predictor in isolation. Per-predictor scores fall out
of the same runs, so no extra LM calls are spent on them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bae.dataset import GoldTrace
from bae.exceptions import BaeError, BaeLMError
from bae.graph import Graph
from bae.lm import LM
from bae.metrics import fields_score
from bae.node import Node, spec_of

Key = tuple[str, str]  # (node name, "make" | "choice")


def _generated(node: Node) -> dict[str, Any]:
    return {f.name: getattr(node, f.name) for f in spec_of(type(node)).generated}


@dataclass
class TraceScore:
    score: float
    path_ok: bool
    per_predictor: dict[Key, float] = field(default_factory=dict)
    error: str | None = None


def score_trace(gold: Sequence[Node], predicted: Sequence[Node]) -> TraceScore:
    """Score a predicted trace: each gold step after the start earns (right node + field matches)."""
    per: dict[Key, float] = {}
    steps: list[float] = []
    for i in range(1, len(gold)):
        want = gold[i]
        got = predicted[i] if i < len(predicted) else None
        before = spec_of(type(gold[i - 1]))
        right_node = got is not None and type(got) is type(want) and type(predicted[i - 1]) is type(gold[i - 1])
        if before.decides:
            per[(type(gold[i - 1]).__name__, "choice")] = float(right_node)
        fields = _generated(want)
        if not right_node:
            steps.append(0.0)
            continue
        match = fields_score(fields, _generated(got))
        if fields:
            per[(type(want).__name__, "make")] = match
        steps.append((1 + match * len(fields)) / (1 + len(fields)))
    last = spec_of(type(gold[-1]))
    if last.decides and len(predicted) >= len(gold) and type(predicted[len(gold) - 1]) is type(gold[-1]):
        per[(type(gold[-1]).__name__, "choice")] = float(len(predicted) == len(gold))
    steps.extend(0.0 for _ in range(max(0, len(predicted) - len(gold))))  # extra steps cost
    paths_equal = [type(n) for n in gold] == [type(n) for n in predicted]
    score = sum(steps) / len(steps) if steps else float(paths_equal)
    return TraceScore(score=score, path_ok=paths_equal, per_predictor=per)


@dataclass
class GraphScore:
    """Mean trace score, path accuracy, per-predictor means, and how many runs failed."""

    score: float
    path_accuracy: float
    per_predictor: dict[Key, float]
    errors: int
    traces: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4),
            "path_accuracy": round(self.path_accuracy, 4),
            "errors": self.errors,
            "traces": self.traces,
            "per_predictor": {f"{n}.{k}": round(v, 4) for (n, k), v in sorted(self.per_predictor.items())},
        }


def evaluate_graph(
    graph: Graph,
    traces: Sequence[GoldTrace],
    lm: LM,
    deps: dict[str, Any],
    num_threads: int = 1,
    on_done: Callable[[], None] | None = None,
) -> GraphScore:
    """Run every trace's start node through ``lm`` and score the runs against the gold traces.

    A run that fails scores 0 and is counted; an LM that is unavailable stops the evaluation.
    """

    def one(trace: GoldTrace) -> TraceScore:
        try:
            result = graph.run(trace.nodes[0].model_copy(), lm=lm, **deps)
            scored = score_trace(trace.nodes, result.trace)
        except BaeLMError:
            raise
        except BaeError as exc:
            scored = TraceScore(score=0.0, path_ok=False, error=exc.message)
        if on_done is not None:
            on_done()
        return scored

    pool = ThreadPoolExecutor(max_workers=max(1, num_threads))
    try:
        results = list(pool.map(one, traces))
    except BaseException:  # Ctrl-C or an unavailable LM: the rest is cancelled; do not wait for traces under way
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    sums: dict[Key, list[float]] = defaultdict(list)
    for result in results:
        for key, value in result.per_predictor.items():
            sums[key].append(value)
    count = max(1, len(results))
    return GraphScore(
        score=sum(r.score for r in results) / count,
        path_accuracy=sum(r.path_ok for r in results) / count,
        per_predictor={key: sum(v) / len(v) for key, v in sums.items()},
        errors=sum(r.error is not None for r in results),
        traces=len(results),
    )
