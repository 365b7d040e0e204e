"""What a run returns: the final node, the trace, and a record of every LM call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bae.node import Node


@dataclass
class GraphResult:
    """The node the run ended on and every node it passed through, start included."""

    node: Node
    trace: list[Node] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)

    @property
    def path(self) -> list[str]:
        """The node class names in order, the shape a gold trace is compared on."""
        return [type(n).__name__ for n in self.trace]


@dataclass(slots=True)  # one per LM call: a frozen dataclass's __init__ costs twice as much
class CallRecord:
    """One LM call as bae saw it: which predictor, where it came from, what it cost.

    ``source`` is ``optimized`` (a compiled predictor), ``naive`` (none compiled) or
    ``stale`` (compiled for a schema that has since changed, so not used). ``attempts``
    counts every request sent for the call: self-corrections and transient retries alike.
    ``cut`` says a request of the call was cut short by a bound bae set: ``length`` (the answer
    reached ``max_tokens``) or ``timeout`` (the per-call timeout), even when a retry recovered.
    ``confidence`` is the model's probability of the closed answer it gave (a choice, a ``Literal``,
    enum or bool field; the least probable one where there are several), when the LM reported one
    (``bae.confidence``); None otherwise. ``step`` is the trace position of the node the call helped
    make (its choice or its fields), set when the call ran inside a ``bae.run.Run``.
    """

    node: str
    kind: str
    source: str
    latency_s: float
    attempts: int = 1
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    error: str | None = None
    cut: str | None = None
    confidence: float | None = None
    step: int | None = None
