"""What a review is about: an input, the answer shown for it, and the other answers it can be held against.

An *answer* is one trace for an input: a run recorded in production, a gold trace, a version's run in
``bae eval --output``, or a teacher's (``--suggest``). Answers are compared on what an LM made in them,
as compile scores them: the path, and the fields generated at each step an LM made (custom logic's
steps and the ``Context`` fields copied along are no one's answer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bae.node import Node, node_json, spec_of


@dataclass(frozen=True)
class Answer:
    """One trace for an input, by ``label`` (``recorded``, ``gold``, a version's name, ``teacher v2``...).

    ``nodes`` is the whole trace when it is one a graph run can end with; a failed run has ``error`` and
    the ``path`` it took instead. ``calls`` are the recorded ``lm`` entries per trace position (which
    predictor made the step, from which version, how sure: ``bae.recording``)."""

    label: str
    nodes: tuple[Node, ...] | None
    calls: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None
    path: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(type(n).__name__ for n in self.nodes) if self.nodes is not None else self.path

    @property
    def confidence(self) -> float | None:
        """The least confident LM call in the answer (None when no call reported one)."""
        known = [c["confidence"] for calls in self.calls.values() for c in calls if _number(c.get("confidence"))]
        return min(known) if known else None

    @property
    def versions(self) -> list[str]:
        """The versions that made it, as its calls recorded them, in order of first appearance."""
        seen: list[str] = []
        for calls in self.calls.values():
            for call in calls:
                version = call.get("version")
                if isinstance(version, str) and version not in seen:
                    seen.append(version)
        return seen


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ReviewItem:
    """One input to review: where it was read, its start node, the answer a screen starts from
    (``proposal``) and the others beside it (``alternatives``: gold and versions of an eval output, a
    teacher's suggestion)."""

    source: str  # file:line of the line reviewed (an eval output's first line for the input)
    index: int  # its place in the inputs, in the order given
    start: Node
    proposal: Answer
    alternatives: list[Answer] = field(default_factory=list)
    gold_source: str | None = None  # for an eval output: the dataset line its gold trace is

    @property
    def key(self) -> str:
        return input_key(self.start)

    @property
    def confidence(self) -> float | None:
        return self.proposal.confidence

    def disagreeing(self) -> list[Answer]:
        """The alternatives whose LM-made part differs from the proposal's."""
        return [a for a in self.alternatives if not agree(self.proposal, a)]


def input_key(start: Node) -> str:
    """An input's identity: its start node's fields as canonical JSON. One input is reviewed once, from
    whichever file it came, so a session can stop and resume."""
    return json.dumps(node_json(start), sort_keys=True, ensure_ascii=False)


def made(nodes: Sequence[Node]) -> list[tuple[str, dict[str, Any]]]:
    """What an LM made in a trace: each node's name and, where an LM made the step, its generated fields."""
    out: list[tuple[str, dict[str, Any]]] = []
    for position, node in enumerate(nodes):
        fields: dict[str, Any] = {}
        if position > 0 and spec_of(type(nodes[position - 1])).routed:
            data = node_json(node)
            fields = {f.name: data.get(f.name) for f in spec_of(type(node)).generated}
        out.append((type(node).__name__, fields))
    return out


def agree(first: Answer, second: Answer) -> bool:
    """Whether two answers took the same path and an LM made the same fields along it."""
    if first.nodes is None or second.nodes is None:
        return first.nodes is None and second.nodes is None and first.path == second.path
    return made(first.nodes) == made(second.nodes)


def lm_made(nodes: Sequence[Node], position: int) -> bool:
    """Whether an LM made the step at ``position`` (its predecessor is routed by bae, not by code)."""
    return position > 0 and spec_of(type(nodes[position - 1])).routed
