"""LM calls added up per predictor: the one count of "which nodes ran optimized, at what cost".

``bae run``'s usage table, ``OptimizedLM.get_stats``, the usage of ``POST /run``, compile's and eval's
cost per stage and ``bae stats`` all count ``CallRecord``s through ``UsageCounter`` and ``UsageRow``.
A ``UsageCounter`` is also a run observer, so a batch, a server or an evaluation counts its runs'
calls as they happen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from typing_extensions import TypedDict  # pydantic (bae serve's response model) needs this one before 3.12

from bae.observe import Observer
from bae.result import CallRecord

if TYPE_CHECKING:
    from bae.run import Run

SOURCES = ("optimized", "naive", "stale")


def _plus(total: Any, value: Any) -> Any:
    """A running total of a figure some calls do not report: None until one does, so unknown never reads 0."""
    return total if value is None else value if total is None else total + value


class UsageJSON(TypedDict):
    """A ``UsageRow`` as ``bae run --json``, ``POST /run`` and eval's ``--json`` give it."""

    node: str
    kind: str
    calls: int
    attempts: int
    optimized: int
    naive: int
    stale: int
    errors: int
    mean_latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None


@dataclass
class UsageRow:
    """One predictor's calls: how many, by source (compiled, naive or stale), failed ones, time and tokens."""

    node: str
    kind: str
    calls: int = 0
    attempts: int = 0  # requests sent, retries included
    optimized: int = 0
    naive: int = 0
    stale: int = 0
    errors: int = 0
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None

    def add(self, call: CallRecord) -> None:
        self.calls += 1
        self.attempts += call.attempts
        setattr(self, call.source, getattr(self, call.source) + 1)
        self.errors += call.error is not None
        self.latency_s += call.latency_s
        self.prompt_tokens = _plus(self.prompt_tokens, call.prompt_tokens)
        self.completion_tokens = _plus(self.completion_tokens, call.completion_tokens)
        self.cost = _plus(self.cost, call.cost)

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s / self.calls if self.calls else 0.0

    @property
    def tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def as_dict(self) -> UsageJSON:
        return {
            "node": self.node,
            "kind": self.kind,
            "calls": self.calls,
            "attempts": self.attempts,
            "optimized": self.optimized,
            "naive": self.naive,
            "stale": self.stale,
            "errors": self.errors,
            "mean_latency_s": round(self.mean_latency_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
        }


class UsageCounter(Observer):
    """Calls summed per (node, kind) as they happen, from any number of threads: an observer of the runs
    it is given to (``lm_called``), or fed directly (``add``). Holds one row per predictor, never the calls."""

    def __init__(self, calls: Iterable[CallRecord] = ()) -> None:
        self._rows: dict[tuple[str, str], UsageRow] = {}
        self._lock = threading.Lock()
        for call in calls:
            self.add(call)

    def add(self, call: CallRecord) -> None:
        with self._lock:
            row = self._rows.get((call.node, call.kind))
            if row is None:
                row = self._rows[(call.node, call.kind)] = UsageRow(call.node, call.kind)
            row.add(call)

    def lm_called(self, run: Run, call: CallRecord) -> None:
        self.add(call)

    def rows(self) -> list[UsageRow]:
        """Copies of the rows, in first-seen order."""
        with self._lock:
            return [replace(row) for row in self._rows.values()]

    def cost(self) -> dict[str, int]:
        """LM requests (retries included) and tokens: what a stage of work cost (compile's and eval's usage)."""
        rows = self.rows()
        return {
            "calls": sum(row.attempts for row in rows),
            "prompt_tokens": sum(row.prompt_tokens or 0 for row in rows),
            "completion_tokens": sum(row.completion_tokens or 0 for row in rows),
        }


def usage_rows(calls: Iterable[CallRecord]) -> list[UsageRow]:
    """Calls summed per (node, kind), in first-seen order."""
    return UsageCounter(calls).rows()
