"""Production runs of a loaded graph: one shared backend, every run logged. ``bae run`` and ``bae serve`` share it.

Kept free of CLI and HTTP concerns so both front ends log, record and count runs the
same way; DSPy is imported only when a backend is opened.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bae.exceptions import BaeError
from bae.graph import Graph
from bae.loader import LoadedGraph
from bae.node import Node, spec_of
from bae.result import CallRecord, GraphResult
from bae.usage import usage_rows

if TYPE_CHECKING:
    from bae.optimized_lm import OptimizedLM
    from bae.runlog import RunLog

logger = logging.getLogger("bae")


class RunSink(Protocol):
    """Where a finished run is logged: a ``RunLog``, or a ``BackgroundLog`` in front of one."""

    def log_run(self, **run: Any) -> object: ...


class BackgroundLog:
    """A run log written by one background thread, so a run never waits on SQLite.

    A write is a transaction with an fsync, and writers to one file take turns: done
    inline, that time is spent holding one of a server's concurrency slots. Here runs
    queue (bounded: a log that cannot keep up slows runs down rather than filling
    memory) and one thread writes them in order. ``flush`` waits for the queue to drain;
    ``close`` flushes and stops the thread.
    """

    def __init__(self, log: RunLog, max_pending: int = 10_000) -> None:
        self.log = log
        self._pending: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._write, name="bae-runlog", daemon=True)
        self._thread.start()

    def log_run(self, **run: Any) -> None:
        self._pending.put(run)

    def flush(self) -> None:
        self._pending.join()

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join()

    def _write(self) -> None:
        from bae.runlog import RunLogError

        while True:
            run = self._pending.get()
            try:
                if run is None:
                    return
                self.log.log_run(**run)
            except RunLogError as exc:  # a run that worked is not failed by its log
                logger.warning("run not logged: %s", exc.message)
            finally:
                self._pending.task_done()


def node_json(node: Node) -> dict[str, Any]:
    """A node as JSON: LM-visible fields only (``Bind`` values are services, not data)."""
    bound = {f.name for f in spec_of(type(node)).bound}
    return node.model_dump(mode="json", exclude=bound)


def trace_json(result: GraphResult) -> list[dict[str, Any]]:
    return [{"node": type(n).__name__, "fields": node_json(n)} for n in result.trace]


def run_json(outcome: Outcome, version: str | None) -> dict[str, Any]:
    """One run as ``bae run --json`` prints it and ``POST /run`` answers it: the node it ended on, its
    fields, the trace, LM usage per predictor, the version and the run's seconds. A failed run (which
    the server answers with an HTTP error instead) has ``error`` in place of the node, result and trace."""
    ran: dict[str, Any]
    if outcome.result is None:
        ran = {"error": outcome.error.message if outcome.error else "interrupted"}
    else:
        node = outcome.result.node
        ran = {"node": type(node).__name__, "result": node_json(node), "trace": trace_json(outcome.result)}
    usage = [row.as_dict() for row in usage_rows(outcome.calls)]
    return {**ran, "usage": usage, "version": version, "duration_s": round(outcome.duration_s, 4)}


def record_traces(path: Path, results: Iterable[GraphResult]) -> None:
    """Append each run's trace to ``path`` in the dataset format (``bae run --record``), in the order given."""
    lines = "".join(json.dumps({"trace": trace_json(result)}, ensure_ascii=False) + "\n" for result in results)
    if lines:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(lines)


@dataclass
class Outcome:
    """One run's result or failure, in the shape the CLI prints, logs and records."""

    line: int
    result: GraphResult | None = None
    error: BaeError | None = None
    calls: list[CallRecord] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        if self.result is None:
            return {"line": self.line, "ok": False, "error": self.error.message if self.error else "interrupted"}
        return {
            "line": self.line,
            "ok": True,
            "node": type(self.result.node).__name__,
            "result": node_json(self.result.node),
            "trace": trace_json(self.result),
        }


@dataclass
class Backend:
    """The LM backend a process serves with, what the run log records about it, and its stale predictors."""

    lm: OptimizedLM
    meta: dict[str, Any]
    stale: set[tuple[str, str]] = field(default_factory=set)


def open_backend(loaded: LoadedGraph, compiled: Path | None, lm_spec: str | None) -> Backend:
    """Resolve the LM and load the compiled version (verified) once; ``compiled=None`` runs naive predictors."""
    from bae.lm_specs import lm_name, resolve_lm
    from bae.optimized_lm import OptimizedLM, load_optimized

    model = resolve_lm(lm_spec)
    meta: dict[str, Any] = {"version": None, "compiled_dir": None, "lm": lm_name(model)}
    if compiled is None:
        return Backend(OptimizedLM(lm=model), meta)
    version = load_optimized(loaded.graph, compiled)
    meta.update(version=version.version, compiled_dir=str(version.version_dir))
    return Backend(version.lm(lm=model), meta, set(version.stale))


class Runner:
    """Runs inputs through one shared backend, logging each run.

    Thread-safe: ``bae run --batch`` and ``bae serve`` call ``run`` from many worker threads.
    ``warn`` reports a run-log write that failed (the run itself still counts).
    """

    def __init__(
        self,
        loaded: LoadedGraph,
        lm: Any,
        logs: Sequence[RunSink],
        meta: dict[str, Any],
        warn: Callable[[str], None] = logger.warning,
    ) -> None:
        self.loaded, self.lm, self.logs, self.meta, self.warn = loaded, lm, logs, meta, warn

    @property
    def graph(self) -> Graph:
        return self.loaded.graph

    def run(self, line: int, start: Node, max_steps: int) -> Outcome:
        outcome = Outcome(line)
        started_at = datetime.now(UTC)
        began = time.perf_counter()
        status, error = "ok", None
        try:
            outcome.result = self.graph.run(start, lm=self.lm, max_steps=max_steps, **self.loaded.deps)
            outcome.calls = outcome.result.calls
        except BaeError as exc:
            outcome.error, status, error = exc, "error", exc.message
            outcome.calls = exc.result.calls if exc.result is not None else []
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception as exc:  # a bug in user code or bae: still logged as a failed run, then raised
            status, error = "error", f"unexpected {type(exc).__name__}: {exc}"
            raise
        finally:
            outcome.duration_s = time.perf_counter() - began
            self._log(outcome, started_at, status, error)
        return outcome

    def _log(self, outcome: Outcome, started_at: datetime, status: str, error: str | None) -> None:
        from bae.runlog import RunLogError

        for log in self.logs:
            try:
                log.log_run(
                    started_at=started_at,
                    duration_s=outcome.duration_s,
                    status=status,
                    error=error,
                    graph=self.loaded.reference,
                    start_node=self.graph.start.__name__,
                    calls=outcome.calls,
                    **self.meta,
                )
            except RunLogError as exc:  # a run that worked is not failed by its log
                self.warn(f"run not logged: {exc.message}")
