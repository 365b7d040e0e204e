"""``OptimizedLM``: the production backend, compiled predictors first, naive ones as fallback.

Built on ``DSPyBackend``, so retries, self-correction and two-step decide are the same
code. Predictors are looked up by node *name*: a class imported twice (the seeds'
pitfall 2) still finds its compiled predictor, and a node without one falls back to
a naive predictor instead of raising ``KeyError``. Every call is counted by source.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bae.compiler import NodePredict
from bae.dspy_backend import DSPyBackend
from bae.graph import Graph
from bae.node import Node
from bae.result import CallRecord

logger = logging.getLogger("bae")

Key = tuple[str, str]


class OptimizedLM(DSPyBackend):
    """Use the loaded predictor for (node, kind) where one exists; naive where not or where stale."""

    def __init__(
        self,
        optimized: dict[Any, NodePredict] | None = None,
        stale: set[Key] | None = None,
        version: str | None = None,
        **backend: Any,
    ) -> None:
        super().__init__(**backend)
        self.optimized: dict[Key, NodePredict] = {
            (k[0] if isinstance(k[0], str) else k[0].__name__, k[1]): p for k, p in (optimized or {}).items()
        }
        self.stale = set(stale or ())
        self.version = version
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._warned: set[Key] = set()
        self._stats_lock = threading.Lock()
        self.listeners.append(self._count)

    def predictor_for(self, cls: type[Node], kind: str) -> tuple[NodePredict, str]:
        key = (cls.__name__, kind)
        predictor = self.optimized.get(key)
        if predictor is not None:
            return predictor, "optimized"
        if key in self.stale:
            if key not in self._warned:
                self._warned.add(key)
                logger.warning(
                    "%s (%s): compiled predictor is stale (schema changed since compile); using a naive one", *key
                )
            return self.naive_predictor(cls, kind), "stale"
        return self.naive_predictor(cls, kind), "naive"

    def _count(self, record: CallRecord) -> None:
        with self._stats_lock:
            self._counts[(record.node, record.kind, record.source)] += 1
            if record.error is not None:
                self._errors[(record.node, record.kind)] += 1

    def get_stats(self) -> dict[str, Any]:
        """Calls by source overall and per (node, kind): answers "which nodes ran optimized?"."""
        with self._stats_lock:
            counts = dict(self._counts)
            errors = dict(self._errors)
        totals: Counter[str] = Counter()
        per_node: dict[str, dict[str, int]] = {}
        for (node, kind, source), n in sorted(counts.items()):
            totals[source] += n
            row = per_node.setdefault(f"{node}.{kind}", {"optimized": 0, "naive": 0, "stale": 0, "errors": 0})
            row[source] += n
        for (node, kind), n in errors.items():
            per_node.setdefault(f"{node}.{kind}", {"optimized": 0, "naive": 0, "stale": 0, "errors": 0})["errors"] = n
        return {
            "optimized": totals["optimized"],
            "naive": totals["naive"],
            "stale": totals["stale"],
            "errors": sum(errors.values()),
            "nodes": per_node,
        }


def create_optimized_lm(graph: Graph, path: str | Path, **backend: Any) -> OptimizedLM:
    """Load a compiled root or version dir once and serve ``graph`` with it."""
    from bae.optimizer import load_optimized

    loaded = load_optimized(graph, Path(path))
    return OptimizedLM(loaded.predictors, stale=loaded.stale, version=loaded.version, **backend)
