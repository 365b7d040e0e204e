"""A graph run as an object: it owns the trace and the LM call records, and tells observers what happens.

``Graph`` only routes (which node comes next); a ``Run`` walks it from the start node: it keeps the
trace, the ``Bind`` values and the run's services, collects every LM call an LM backend records on it,
and calls its observers at the run's start, around each step, at each LM call and at its end. Whatever
watches runs is an observer: OpenTelemetry spans (``bae.telemetry``), the run log (``bae.runlog``), the
usage table and compile's counters (``bae.usage``), a progress display. None of them is known to the graph.

The run in progress is found through a context variable, so a backend called from deep inside a node's
``__call__`` records its calls on the right run, in any thread or task. Observers run in the run's own
thread, in order; one shared by concurrent runs must be thread-safe (``bae.observe``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeError
from bae.observe import Observer, every_run_observers
from bae.resolve import RunState
from bae.result import CallRecord, GraphResult

if TYPE_CHECKING:
    from bae.graph import Graph
    from bae.lm import LM
    from bae.node import Node


_ACTIVE: ContextVar[Run | None] = ContextVar("bae_run", default=None)


def active_run() -> Run | None:
    """The run in progress in this context (thread or task), if any."""
    return _ACTIVE.get()


class Run:
    """One walk of a graph from a start node; ``execute`` runs it once.

    ``state`` holds what values flow through (the trace, ``Bind`` exports, services: ``bae.resolve``),
    ``calls`` every LM call recorded on this run, in the order they ended.
    """

    def __init__(
        self,
        graph: Graph,
        start: Node,
        lm: LM,
        *,
        services: dict[str, Any] | None = None,
        observers: Iterable[Observer] = (),
        max_steps: int = 100,
    ) -> None:
        self.graph = graph
        self.start = start
        self.lm = lm
        self.max_steps = max_steps
        self.state = RunState(services=dict(services or {}))
        self.calls: list[CallRecord] = []
        self.observers: tuple[Observer, ...] = (*every_run_observers(), *observers)
        self.started_at = datetime.now(UTC)
        self._began = time.perf_counter()
        self.duration_s = 0.0

    @property
    def trace(self) -> list[Node]:
        return self.state.trace

    def record_call(self, call: CallRecord) -> None:
        """Keep an LM call made during this run and tell the observers (backends call this)."""
        self.calls.append(call)
        for observer in self.observers:
            observer.lm_called(self, call)

    def execute(self) -> GraphResult:
        """Walk from the start node until a node ends the run. A ``BaeError`` leaves with ``.result``:
        the trace and the calls up to the failure, so callers can log and show them."""
        node = self.start
        self.state.append(node)
        with self._current():
            try:
                for observer in self.observers:
                    observer.run_started(self)
                for _ in range(self.max_steps):
                    following = self._step(node)
                    if following is None:
                        return self._ended(GraphResult(node=node, trace=self.trace, calls=self.calls), None)
                    self.state.append(following)
                    node = following
                raise BaeError(f"run exceeded max_steps={self.max_steps}: {_loop_of(self.trace)}")
            except BaseException as exc:
                if isinstance(exc, BaeError):
                    exc.result = GraphResult(node=node, trace=self.trace, calls=self.calls)
                self._ended(None, exc)
                raise

    def _step(self, node: Node) -> Node | None:
        for observer in self.observers:
            observer.step_started(self, node)
        try:
            following = self.graph.step(node, self.lm, self.state)
        except BaseException as exc:
            for observer in self.observers:
                observer.step_ended(self, node, None, exc)
            raise
        for observer in self.observers:
            observer.step_ended(self, node, following, None)
        return following

    def _ended(self, result: GraphResult | None, error: BaseException | None) -> GraphResult:
        self.duration_s = time.perf_counter() - self._began
        for observer in self.observers:
            observer.run_ended(self, result, error)
        assert result is not None or error is not None
        return result  # type: ignore[return-value]  # callers re-raise ``error``

    @contextmanager
    def _current(self) -> Iterator[None]:
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)


def _loop_of(trace: list[Node]) -> str:
    """Name the cycle at the tail of a trace, e.g. ``loop: Draft -> Review -> Draft``."""
    names = [type(n).__name__ for n in trace]
    last = names[-1]
    earlier = [i for i, name in enumerate(names[:-1]) if name == last]
    if not earlier:
        return "no node repeated: raise max_steps for this long a run"
    return "loop: " + " -> ".join(names[earlier[-1] :])
