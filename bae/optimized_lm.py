"""The runtime: open a compiled version (verified) and serve a graph with it through ``OptimizedLM``.

``open_version`` is the one loading path: every command, ``bae.evaluate``, ``CompiledGraph.load`` and
``create_optimized_lm`` go through it, so they agree on what a version is called, which of its
predictors the graph can use, and what to warn about. It opens the version once
(``bae.compiled_version``: located, every file verified, matched to the graph) and builds a DSPy
predictor from each usable node file. Training lives in ``bae.optimizer``; nothing here imports it.

``OptimizedLM`` is the production backend, compiled predictors first, naive ones as fallback.
Built on ``DSPyBackend``, so retries, self-correction, two-step decide and the call counts are
the same code. Predictors are looked up by node *name*: a class imported twice (the seeds'
pitfall 2) still finds its compiled predictor, and a node without one falls back to a naive
predictor instead of raising ``KeyError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bae.compiled_version import CompiledVersion, GraphSource, as_loaded, open_compiled
from bae.decisions import NodeDecisions, node_decisions
from bae.dspy_backend import DSPyBackend
from bae.exceptions import BaeArtifactError, BaeInputError
from bae.freshness import OPTIMIZED
from bae.graph import Graph
from bae.loader import LoadedGraph
from bae.node import Node
from bae.predictors import NodePredict, new_predictor
from bae.result import GraphResult

logger = logging.getLogger("bae")

Key = tuple[str, str]
R = TypeVar("R")
NAIVE = "naive"  # the name of the naive graph where a version's name is asked for (columns, --baseline)


class OptimizedLM(DSPyBackend):
    """Use the loaded predictor for (node, kind) where one exists; naive where not or where stale.

    Where the version holds hidden-state decisions for a predictor (``hidden``, ``bae.decisions``) and the
    LM is the embedded engine on the model file they were read with, those decide its closed fields: one
    short pass each, no demos; a predictor with open fields too still answers those. Any other LM, or
    another model file (said once, as a stale warning), gets the predictor's demos as before."""

    def __init__(
        self,
        optimized: dict[Any, NodePredict] | None = None,
        stale: set[Key] | None = None,
        version: str | None = None,
        hidden: dict[Key, NodeDecisions] | None = None,
        warn: Callable[[str], None] = logger.warning,
        **backend: Any,
    ) -> None:
        super().__init__(**backend)
        self.optimized: dict[Key, NodePredict] = {
            (k[0] if isinstance(k[0], str) else k[0].__name__, k[1]): p for k, p in (optimized or {}).items()
        }
        self.stale = set(stale or ())
        self.version = version
        self.hidden = dict(hidden or {})
        self.warn = warn
        self._warned: set[Key] = set()
        self._warn_lock = threading.Lock()

    def predictor_for(self, cls: type[Node], kind: str) -> tuple[NodePredict, str]:
        key = (cls.__name__, kind)
        predictor = self.optimized.get(key)
        if predictor is not None:
            return predictor, "optimized"
        return self.naive_predictor(cls, kind), "stale" if key in self.stale else "naive"

    def _embedded(self, decisions: NodeDecisions) -> Any:
        """The loaded embedded model (and its prefix cache) these decisions can be read with, else None."""
        import dspy

        from bae.lm_specs import default_lm
        from bae.local.engine import embedded_engine
        from bae.local.hidden import model_sha256
        from bae.local.model import load_model

        lm = self.model if self.model is not None else (dspy.settings.lm or default_lm())
        engine = embedded_engine(lm)
        if engine is None:
            return None
        if model_sha256(engine.model_file) != decisions.model_sha256:
            key = (decisions.node, decisions.kind)
            with self._warn_lock:
                first = key not in self._warned
                self._warned.add(key)
            if first:
                self.warn(
                    f"{self.version}: {decisions.node} ({decisions.kind}): its hidden-state decisions were read "
                    f"with another model file (sha256 {decisions.model_sha256[:12]}): deciding with its demos (stale)"
                )
            return None
        model = load_model(Path(engine.model_file))
        return model, (model.prefixes if engine.prefix_cache else None)

    def _predict(
        self, predictor: NodePredict, source: str, inputs: dict[str, Any], build: Callable[[dict[str, Any]], R]
    ) -> R:
        decisions = self.hidden.get((predictor.node_name, predictor.kind)) if source == "optimized" else None
        reader = self._embedded(decisions) if decisions is not None else None
        if decisions is None or reader is None:
            return super()._predict(predictor, source, inputs, build)
        started = time.perf_counter()
        model, cache = reader
        try:
            decided, tokens = decisions.answer(model, cache, inputs)
        except BaseException as exc:
            self.record_pass(predictor, source, started, 0, exc)
            raise
        if not decisions.covers_all:  # the open fields still come from the predictor
            return super()._predict(predictor, source, inputs, lambda answer: build({**answer, **decided}))
        result = build(decided)
        self.record_pass(predictor, source, started, tokens, None)
        return result


@dataclass
class LoadedVersion:
    """A graph and the compiled version it runs with (None: the naive graph, no compiled predictors), with a
    DSPy predictor loaded for each node file the graph can use."""

    graph: LoadedGraph
    compiled: CompiledVersion | None = None
    predictors: dict[Key, NodePredict] = field(default_factory=dict)
    hidden: dict[Key, NodeDecisions] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The version's name as its manifest records it, or ``naive``."""
        return self.compiled.name if self.compiled is not None else NAIVE

    @property
    def is_naive(self) -> bool:
        return self.compiled is None

    @property
    def path(self) -> Path | None:
        return None if self.compiled is None else self.compiled.path

    @property
    def manifest(self) -> dict[str, Any]:
        return {} if self.compiled is None else self.compiled.manifest

    @property
    def stale(self) -> set[Key]:
        return set() if self.compiled is None else self.compiled.stale

    @property
    def missing(self) -> set[Key]:
        return set() if self.compiled is None else self.compiled.missing

    def backend(self, **options: Any) -> OptimizedLM:
        """An ``OptimizedLM`` over these predictors (``model=``, ``adapter=``... go to ``DSPyBackend``)."""
        version = None if self.compiled is None else self.name
        return OptimizedLM(self.predictors, stale=self.stale, version=version, hidden=self.hidden, **options)


def load_decisions(compiled: CompiledVersion) -> dict[Key, NodeDecisions]:
    """The hidden-state decisions of each usable node file that holds some (already checked to be well
    formed data when the file was read)."""
    found: dict[Key, NodeDecisions] = {}
    for held in compiled.predictors:
        if held.status != OPTIMIZED or held.file is None:
            continue
        section = compiled.file(held.file).decisions
        cls = compiled.graph.graph.node(held.node)
        if section is None or cls is None:
            continue
        decisions = node_decisions(cls, held.kind, section)
        if decisions is not None:
            found[held.key] = decisions
    return found


def load_predictors(compiled: CompiledVersion) -> dict[Key, NodePredict]:
    """A fresh DSPy predictor for each node file the graph can use, from the already verified JSON: a failed
    load never leaves a half-updated predictor behind (DSPy's own ``load_state`` is not atomic)."""
    predictors: dict[Key, NodePredict] = {}
    for held in compiled.predictors:
        if held.status != OPTIMIZED or held.file is None:
            continue
        node_file = compiled.file(held.file)  # its state already checked to be plain data when it was read
        cls = compiled.graph.graph.node(held.node)
        assert cls is not None and node_file.predictor is not None  # optimized: the graph has the node
        predictor = new_predictor(cls, held.kind)
        try:
            predictor.load_state(node_file.predictor)
        except Exception as exc:
            raise BaeArtifactError(f"{compiled.path / held.file}: predictor state does not load: {exc}") from exc
        if node_file.retrieval_k is not None:
            predictor.retrieve(node_file.retrieval_k)
        predictors[held.key] = predictor
    return predictors


def open_version(
    path: str | Path | None,
    graph: GraphSource = None,
    version: str | None = None,
    warn: Callable[[str], None] = logger.warning,
) -> LoadedVersion:
    """Open a compiled root's active version (or its ``version``, or a version dir) for ``graph`` (default:
    the one recorded at compile), verified, with its usable predictors loaded; each predictor that went
    stale since compile is ``warn``ed about once, here. ``path=None`` is the naive graph (``graph`` needed)."""
    if path is None:
        if graph is None:
            raise BaeInputError(
                "no graph given: pass GRAPH (file.py[:Name]), or --compiled DIR to use the graph it was compiled from"
            )
        return LoadedVersion(as_loaded(graph))
    compiled = open_compiled(path, graph=graph, version=version)
    for line in compiled.stale_warnings():
        warn(line)
    return LoadedVersion(compiled.graph, compiled, load_predictors(compiled), load_decisions(compiled))


def create_optimized_lm(graph: Graph, path: str | Path, **backend: Any) -> OptimizedLM:
    """Load a compiled root or version dir once and serve ``graph`` with it."""
    return open_version(path, graph).backend(**backend)


class CompiledGraph:
    """A graph with its compiled version: load once, run many times through ``OptimizedLM``."""

    def __init__(self, graph: Graph, version: LoadedVersion) -> None:
        self.graph = graph
        self.version = version

    @classmethod
    def load(cls, graph: Graph, path: str | Path) -> CompiledGraph:
        """Verify and load a compiled root (its active version) or a version dir for ``graph``."""
        return cls(graph, open_version(path, graph))

    @property
    def optimized(self) -> dict[Key, NodePredict]:
        """The usable compiled predictors by (node, kind)."""
        return self.version.predictors

    def backend(self, **options: Any) -> OptimizedLM:
        """An ``OptimizedLM`` over these predictors (``model=``, ``adapter=``... go to ``DSPyBackend``)."""
        return self.version.backend(**options)

    def run(self, start_node: Node, model: Any = None, **deps: Any) -> GraphResult:
        """Run the graph with the compiled predictors; ``model`` is the DSPy LM they call (default: as
        ``DSPyBackend``'s)."""
        return self.graph.run(start_node, lm=self.backend(model=model), **deps)
