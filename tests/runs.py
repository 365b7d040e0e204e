"""Helpers for tests that run graphs: an observer that keeps every LM call, and work in many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from bae.observe import Observer
from bae.result import CallRecord
from bae.run import Run

T = TypeVar("T")


class CallLog(Observer):
    """Every LM call of the runs it observes, in the order the calls ended (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self._lock = threading.Lock()

    def lm_called(self, run: Run, call: CallRecord) -> None:
        with self._lock:
            self.calls.append(call)


def in_threads(work: Callable[[int], T], count: int) -> list[T]:
    """``work(0)`` to ``work(count - 1)``, each in its own thread, all started before any is joined: their
    results in that order. What a thread raised is raised here (a plain thread would only print it)."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
