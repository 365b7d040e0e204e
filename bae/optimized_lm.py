"""The runtime: load a compiled version (verified) and serve a graph with it through ``OptimizedLM``.

``load_optimized`` is the one loading path: ``CompiledGraph.load``, ``create_optimized_lm``
and the CLI's runner all go through it, so they agree on what a version is called and
which predictors are usable. Training lives in ``bae.optimizer``; nothing here imports it.

``OptimizedLM`` is the production backend, compiled predictors first, naive ones as fallback.
Built on ``DSPyBackend``, so retries, self-correction and two-step decide are the same
code. Predictors are looked up by node *name*: a class imported twice (the seeds'
pitfall 2) still finds its compiled predictor, and a node without one falls back to
a naive predictor instead of raising ``KeyError``. Every call is counted by source.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bae import artifacts
from bae.compiler import NodePredict, new_predictor
from bae.dspy_backend import DSPyBackend
from bae.exceptions import BaeArtifactError
from bae.freshness import MISSING, STALE, predictor_statuses
from bae.graph import Graph
from bae.node import Node
from bae.result import CallRecord, GraphResult

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
                    "%s (%s): compiled predictor is stale (its prompt changed since compile); using a naive one", *key
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


@dataclass
class LoadedVersion:
    """A verified compiled version: predictors keyed by (node, kind), and what could not be used."""

    version_dir: Path
    manifest: dict[str, Any]
    predictors: dict[Key, NodePredict] = field(default_factory=dict)
    stale: set[Key] = field(default_factory=set)
    missing: set[Key] = field(default_factory=set)

    @property
    def version(self) -> str:
        """The version's name as its manifest records it (a copied or renamed dir keeps its name)."""
        return str(self.manifest.get("version", self.version_dir.name))

    def lm(self, **backend: Any) -> OptimizedLM:
        """An ``OptimizedLM`` over these predictors (``lm=``, ``adapter=``... go to ``DSPyBackend``)."""
        return OptimizedLM(self.predictors, stale=self.stale, version=self.version, **backend)


def load_optimized(graph: Graph, path: str | Path) -> LoadedVersion:
    """Load a compiled root (its active version) or a version dir for ``graph``: JSON only,
    checksums and fingerprints checked.

    A predictor whose node (or, for a choice, one of its options) changed since compile is *stale*
    (not used); one the graph no longer has is *missing* (``bae.freshness`` decides). Each predictor
    loads into a fresh ``Predict``, so a failed load never leaves a half-updated one behind.
    """
    version_dir = artifacts.resolve_version_dir(Path(path))
    manifest = artifacts.read_manifest(version_dir)
    loaded = LoadedVersion(version_dir=version_dir, manifest=manifest)
    for held in predictor_statuses(graph, manifest):
        if held.file is None:  # naive: the version has no predictor for it
            continue
        document = artifacts.read_verified(version_dir, held.file, manifest)  # every file verified, used or not
        state = artifacts.predictor_state(document, str(version_dir / held.file))
        if held.status == MISSING:
            loaded.missing.add(held.key)
            continue
        if held.status == STALE:
            loaded.stale.add(held.key)
            continue
        cls = graph.node(held.node)
        assert cls is not None  # optimized: the graph has the node
        predictor = new_predictor(cls, held.kind)
        try:
            predictor.load_state(state)
        except Exception as exc:
            raise BaeArtifactError(f"{version_dir / held.file}: predictor state does not load: {exc}") from exc
        k = artifacts.retrieval_k(document, str(version_dir / held.file))
        if k is not None:
            predictor.retrieve(k)
        loaded.predictors[held.key] = predictor
    return loaded


def create_optimized_lm(graph: Graph, path: str | Path, **backend: Any) -> OptimizedLM:
    """Load a compiled root or version dir once and serve ``graph`` with it."""
    return load_optimized(graph, path).lm(**backend)


class CompiledGraph:
    """A graph with its compiled version: load once, run many times through ``OptimizedLM``."""

    def __init__(self, graph: Graph, version: LoadedVersion) -> None:
        self.graph = graph
        self.version = version

    @classmethod
    def load(cls, graph: Graph, path: str | Path) -> CompiledGraph:
        """Verify and load a compiled root (its active version) or a version dir for ``graph``."""
        return cls(graph, load_optimized(graph, path))

    @property
    def optimized(self) -> dict[Key, NodePredict]:
        """The usable compiled predictors by (node, kind)."""
        return self.version.predictors

    def lm(self, **backend: Any) -> OptimizedLM:
        """An ``OptimizedLM`` over these predictors (``lm=``, ``adapter=``... go to ``DSPyBackend``)."""
        return self.version.lm(**backend)

    def run(self, start_node: Node, lm: Any = None, **deps: Any) -> GraphResult:
        """Run the graph with the compiled predictors; ``lm`` is the DSPy LM they call."""
        return self.graph.run(start_node, lm=self.lm(lm=lm), **deps)
