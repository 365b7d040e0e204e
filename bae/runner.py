"""Production runs: the runtime a process serves a graph with, one run through it, and how a run is written.

``bae run`` (one input or a batch) and ``bae serve`` share it, free of CLI and HTTP concerns, so both
open a version, log, record and count runs the same way: a ``Runtime`` is opened once (the graph, its
compiled version, the LM backend: ``start_runtime``), a ``Runner`` runs inputs through it with the
process's observers (the run log, usage counting), and each run is printed or answered as
``run_json``. DSPy is imported only when a runtime is opened.

A batch (``bae run --batch``) is a ``BatchWork`` for the batch executor (``bae.executor``): a recipe
(``RuntimeRecipe``: the graph reference, the exact version directory the driver opened, the LM spec and
its settings) that a worker process opens into the same runtime, and whose runs come back as ``RunRow``s,
plain data the driving process alone writes (results, recorded traces, the run log). On threads the
driver's own runtime is used as is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeError, BaeInputError, BaeLMError
from bae.executor import Recipe
from bae.lm import LM
from bae.lm_specs import LMSettings, lm_spec
from bae.loader import LoadedGraph, split_reference
from bae.node import Node, node_json
from bae.observe import Observer
from bae.recording import trace_steps
from bae.result import CallRecord, GraphResult
from bae.runlog import RecordRun, RunRecord, RunSource
from bae.usage import usage_rows
from bae.version import __version__

if TYPE_CHECKING:
    import dspy

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
    record: RunRecord | None = None  # what the run log keeps of it (None: it never ran)

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

    def run(self, line: int, start: Node, *, contain: bool = False) -> Outcome:
        """Run one input; a run that fails as bae understands it is an ``Outcome`` with the error. Anything else
        (a bug, Ctrl-C) is raised after the observers saw the run end; with ``contain`` (a batch, where one
        input's bug is that input's failure) an exception is kept as the outcome's error instead."""
        outcome = Outcome(line)
        began = time.perf_counter()
        graph = self.runtime.graph
        ended = RecordRun()
        try:
            outcome.result = graph.graph.run(
                start, lm=self.runtime.backend, max_steps=self.max_steps, observers=(*self.observers, ended),
                **graph.deps,
            )  # fmt: skip
            outcome.calls = outcome.result.calls
        except BaeError as exc:
            outcome.error = exc
            outcome.calls = exc.result.calls if exc.result is not None else []
        except Exception as exc:
            if not contain:
                raise
            outcome.error = BaeError(f"unexpected {type(exc).__name__}: {exc}", cause=exc)
            outcome.calls = list(ended.record.calls) if ended.record is not None else []
        finally:
            outcome.duration_s = time.perf_counter() - began
            outcome.record = ended.record
        return outcome


def embedded(runtime: Runtime) -> bool:
    """Whether the runtime's LM is the embedded model (its weights take seconds to load)."""
    return runtime.source.lm is not None and runtime.source.lm.startswith("local/")


def warm(runtime: Runtime) -> None:
    """Load the embedded model's weights now, so the wait comes before the first run and a worker process
    loads them once; any other LM has nothing to load."""
    if embedded(runtime):
        from bae.local.engine import load_weights

        load_weights(getattr(runtime.backend, "model", None))


# -- batches: work that a thread pool or other worker processes run ------------------------------------
def _portable(path: str) -> str:
    """A file path as a recipe keeps it: relative to the working directory when inside it (a worker starts
    there, or in its shipped copy on a cluster), else absolute (this machine only)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def portable_reference(reference: str) -> str:
    """``file.py[:Name]`` (a graph, an LM factory, a metric) with its file made portable; anything else (a
    module reference, a model string) as it is."""
    target, attribute = split_reference(reference)
    if not target.endswith(".py"):
        return reference
    return _portable(target) + (f":{attribute}" if attribute else "")


@dataclass(frozen=True)
class RuntimeRecipe:
    """How a worker process opens the runtime the driver opened: the graph reference, the exact version
    directory (None: naive), the LM spec and its settings, all picklable. The version directory is the one
    the driver resolved, so a ``bae promote`` during a batch cannot split it across versions, and each
    worker verifies it again (the one loading path)."""

    graph: str
    version_dir: str | None
    lm: str
    settings: LMSettings
    bae_version: str = __version__

    @classmethod
    def of(cls, runtime: Runtime, lm: str | None, settings: LMSettings | None) -> RuntimeRecipe:
        """The recipe for ``runtime``, opened from the ``--lm`` spec ``lm`` (None: ``$BAE_LM``, else the
        embedded model, read here so every worker uses the driver's choice) with ``settings``."""
        version_dir = None if runtime.version.path is None else _portable(str(runtime.version.path))
        graph = portable_reference(runtime.graph.reference)
        return cls(graph, version_dir, portable_reference(lm_spec(lm)), settings or LMSettings())

    def files(self) -> list[tuple[str, str]]:
        """The files this recipe names, each with the flag that named it, for an engine that ships the working
        directory to other machines to check they are inside it."""
        named = [("GRAPH", split_reference(self.graph)[0]), ("--lm", split_reference(self.lm)[0])]
        return [(flag, path) for flag, path in named if path.endswith(".py")] + (
            [("--compiled", self.version_dir)] if self.version_dir is not None else []
        )

    def open(self) -> Runtime:
        """Open the runtime in this process: the version verified, the LM built, the embedded model loaded."""
        from bae.optimized_lm import open_version

        if self.bae_version != __version__:
            raise BaeInputError(
                f"this worker runs bae {__version__}, the driver bae {self.bae_version}: install the same bae on"
                " every machine of the cluster"
            )
        version = open_version(self.version_dir, self.graph, warn=lambda _: None)  # the driver warned once
        runtime = start_runtime(version, self.lm, self.settings)
        warm(runtime)
        return runtime


@dataclass(frozen=True)
class RunRow:
    """One batch input's run as the driver writes it, plain data from wherever it ran: its result line
    (``output``, what ``--output`` gets), the failure if any, its LM calls and its run-log record."""

    line: int
    output: dict[str, Any]
    error: str | None = None
    lm_failed: bool = False  # the failure was the LM's (a batch whose every failure is the LM's exits 4)
    calls: tuple[CallRecord, ...] = ()
    record: RunRecord | None = None  # None: refused before it ran (nothing to log)

    @classmethod
    def of(cls, outcome: Outcome, version: str | None) -> RunRow:
        error = outcome.error
        return cls(
            outcome.line, outcome.as_dict(version), None if error is None else error.message,
            isinstance(error, BaeLMError), tuple(outcome.calls), outcome.record,
        )  # fmt: skip

    @property
    def recorded(self) -> dict[str, Any] | None:
        """The run as a line of a ``--record`` file (``bae.recording``: each LM-made step with its calls), None
        for a failed run."""
        trace = self.output.get("trace")
        return None if trace is None else {"trace": trace}


@dataclass(frozen=True)
class BatchWork(Recipe):
    """``bae run --batch``'s work for the batch executor: items are ``(line, the start node's fields as
    JSON)``, each run comes back as a ``RunRow``. ``runtime`` is the driver's own, reused by a thread pool
    in the same process; it is never pickled, so a worker process opens ``recipe`` instead."""

    recipe: RuntimeRecipe
    max_steps: int = 100
    runtime: Runtime | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "runtime": None}

    def files(self) -> list[tuple[str, str]]:
        return self.recipe.files()

    def open(self) -> Callable[[tuple[int, dict[str, Any]]], RunRow]:
        runner = Runner(self.runtime or self.recipe.open(), max_steps=self.max_steps)
        start, version = runner.runtime.graph.graph.start, runner.runtime.source.version

        def one(item: tuple[int, dict[str, Any]]) -> RunRow:
            line, fields = item
            return RunRow.of(runner.run(line, start.model_validate(fields), contain=True), version)

        return one
