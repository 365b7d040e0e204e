"""Production runs: the runtime a process serves a graph with, one run through it, and how a run is written.

``bae run`` (one input or a batch) and ``bae serve`` share it, free of CLI and HTTP concerns, so both
open a version, log, record and count runs the same way: a ``Runtime`` is opened once (the graph, its
compiled version, the LM backend: ``open_runtime``), a ``Runner`` runs inputs through it with the
process's observers (the run log, usage counting), and each run is printed or answered as
``run_json``. DSPy is imported only when a runtime is opened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeError
from bae.lm import LM
from bae.loader import LoadedGraph
from bae.node import Node, node_json
from bae.observe import Observer
from bae.recording import trace_steps
from bae.result import CallRecord, GraphResult
from bae.runlog import RunSource
from bae.usage import usage_rows

if TYPE_CHECKING:
    import dspy

    from bae.lm_specs import LMSettings
    from bae.optimized_lm import LoadedVersion

logger = logging.getLogger("bae")


def run_json(outcome: Outcome, version: str | None) -> dict[str, Any]:
    """One run as ``bae run --json`` prints it and ``POST /run`` answers it: the node it ended on, its
    fields, the trace (each LM-made step with its calls and their confidence: ``bae.recording``), LM usage
    per predictor, the version and the run's seconds. A failed run (which the server answers with an HTTP
    error instead) has ``error`` in place of the node, result and trace."""
    ran: dict[str, Any]
    if outcome.result is None:
        ran = {"error": outcome.error.message if outcome.error else "interrupted"}
    else:
        node = outcome.result.node
        ran = {"node": type(node).__name__, "result": node_json(node), "trace": outcome.steps(version)}
    usage = [row.as_dict() for row in usage_rows(outcome.calls)]
    return {**ran, "usage": usage, "version": version, "duration_s": round(outcome.duration_s, 4)}


@dataclass
class Outcome:
    """One run's result or failure, in the shape the CLI prints, logs and records."""

    line: int
    result: GraphResult | None = None
    error: BaeError | None = None
    calls: list[CallRecord] = field(default_factory=list)
    duration_s: float = 0.0

    def steps(self, version: str | None) -> list[dict[str, Any]]:
        """The run's trace as dataset steps, each LM-made one with its calls (``bae.recording``)."""
        return [] if self.result is None else trace_steps(self.result.trace, self.result.calls, version)

    def as_dict(self, version: str | None) -> dict[str, Any]:
        if self.result is None:
            return {"line": self.line, "ok": False, "error": self.error.message if self.error else "interrupted"}
        return {
            "line": self.line,
            "ok": True,
            "node": type(self.result.node).__name__,
            "result": node_json(self.result.node),
            "trace": self.steps(version),
        }


@dataclass
class Runtime:
    """What a process runs a graph with: the graph and its version (or the naive graph), the LM backend built
    over them, and what the run log records about them."""

    version: LoadedVersion
    backend: LM
    source: RunSource

    @property
    def graph(self) -> LoadedGraph:
        return self.version.graph


def start_runtime(
    version: LoadedVersion, lm: str | dspy.BaseLM | None = None, settings: LMSettings | None = None
) -> Runtime:
    """Build the LM (a DSPy LM, or an ``--lm`` spec bounded by ``settings``) and the backend serving
    ``version`` (opened with ``bae.optimized_lm.open_version``) with it."""
    from bae.lm_specs import LMSettings, lm_name, resolve_lm

    model = lm if lm is not None and not isinstance(lm, str) else resolve_lm(lm, settings or LMSettings())
    path = None if version.path is None else str(version.path)
    source = RunSource(version.graph.reference, None if version.is_naive else version.name, path, lm_name(model))
    return Runtime(version, version.backend(model=model), source)


class Runner:
    """Runs inputs through one runtime, each run observed by ``observers`` (the run log, usage counting).

    Thread-safe: ``bae run --batch`` and ``bae serve`` call ``run`` from many worker threads. It is also the
    batch executor's ``Work`` (``bae.executor``): its items are ``(line, start node)``.
    """

    def __init__(self, runtime: Runtime, observers: Sequence[Observer] = (), max_steps: int = 100) -> None:
        self.runtime, self.observers, self.max_steps = runtime, tuple(observers), max_steps

    def run(self, line: int, start: Node) -> Outcome:
        """Run one input; a run that fails as bae understands it is an ``Outcome`` with the error, anything else
        (a bug, Ctrl-C) is raised after the observers saw the run end."""
        outcome = Outcome(line)
        began = time.perf_counter()
        graph = self.runtime.graph
        try:
            outcome.result = graph.graph.run(
                start, lm=self.runtime.backend, max_steps=self.max_steps, observers=self.observers, **graph.deps
            )
            outcome.calls = outcome.result.calls
        except BaeError as exc:
            outcome.error = exc
            outcome.calls = exc.result.calls if exc.result is not None else []
        finally:
            outcome.duration_s = time.perf_counter() - began
        return outcome

    def open(self) -> Callable[[tuple[int, Node]], Outcome]:
        return lambda item: self.run(*item)
