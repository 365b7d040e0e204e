"""What watches runs: the ``Observer`` events, and the observers every run gets.

A ``bae.run.Run`` calls its observers at its start, around each step, at each LM call and at its end.
Observers run in the run's own thread, in order; one shared by concurrent runs must be thread-safe.
Kept apart from the run itself and free of heavy imports, so a module can register a process-wide
observer (``bae.telemetry`` registers tracing) without pulling the graph machinery into ``import bae``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bae.node import Node
    from bae.result import CallRecord, GraphResult
    from bae.run import Run


class Observer:
    """Told what a run does; override the events you need (each does nothing here)."""

    def run_started(self, run: Run) -> None:
        """The start node is in the trace; no step has run yet."""

    def step_started(self, run: Run, node: Node) -> None:
        """``node`` is about to be routed (its ``__call__``, or the LM making or choosing what follows)."""

    def step_ended(self, run: Run, node: Node, following: Node | None, error: BaseException | None) -> None:
        """``node``'s step ended with ``following`` (None: the run ends there), or failed with ``error``."""

    def lm_called(self, run: Run, call: CallRecord) -> None:
        """An LM call ended, successfully or not (``call.error``)."""

    def run_ended(self, run: Run, result: GraphResult | None, error: BaseException | None) -> None:
        """The run ended with ``result``, or failed with ``error`` (a ``KeyboardInterrupt`` too)."""


ObserverFactory = Callable[[], Observer | None]
_EVERY_RUN: list[ObserverFactory] = []


def observe_every_run(factory: ObserverFactory) -> None:
    """Give every run an observer made by ``factory`` (which returns None to stay out of a run)."""
    if factory not in _EVERY_RUN:
        _EVERY_RUN.append(factory)


def every_run_observers() -> list[Observer]:
    """The process-wide observers for a run starting now."""
    made = (factory() for factory in _EVERY_RUN)
    return [observer for observer in made if observer is not None]
