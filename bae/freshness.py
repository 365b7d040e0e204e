"""Which of a compiled version's predictors a graph can use: the one decision behind loading a version,
``bae inspect``, ``bae graph --compiled``, ``GET /version`` and ``bae bundle``.

Each predictor the graph has, or the version holds, is one of:

- ``optimized``: the version holds it, made for what its prompt shows today (``predictor_fingerprint``);
- ``stale``: the version holds it, but the node (or, for a choice, one of its options) changed since;
- ``missing``: the version holds it, but the graph has no such predictor any more (node gone, or no
  longer generated or deciding);
- ``naive``: the graph has it and the version does not (compile had too few examples for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bae.node import predictor_fingerprint

if TYPE_CHECKING:
    from bae.graph import Graph

OPTIMIZED, STALE, MISSING, NAIVE = "optimized", "stale", "missing", "naive"
PREDICTOR_KINDS = ("make", "choice")


@dataclass(frozen=True)
class PredictorStatus:
    """One predictor: its node and kind, its status, and its node file and manifest entry (None when naive)."""

    node: str
    kind: str
    status: str
    file: str | None = None
    entry: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.node, self.kind


def predictor_statuses(graph: Graph, manifest: dict[str, Any]) -> list[PredictorStatus]:
    """Every predictor of ``graph`` in its order (with the version's file for it, if any), then the
    version's files for predictors the graph no longer has."""
    wanted = graph.predictor_keys()
    held: dict[tuple[str, str], list[PredictorStatus]] = {}
    for rel, entry in manifest["files"].items():
        kind = entry.get("kind")
        if kind not in PREDICTOR_KINDS:
            continue
        node = str(entry.get("node"))
        cls = graph.node(node)
        if cls is None or (node, kind) not in wanted:
            status = MISSING
        elif entry.get("fingerprint") == predictor_fingerprint(cls, kind):
            status = OPTIMIZED
        else:
            status = STALE
        held.setdefault((node, kind), []).append(PredictorStatus(node, kind, status, rel, entry))
    statuses = [s for key in wanted for s in held.pop(key, [PredictorStatus(*key, NAIVE)])]
    return statuses + [s for found in held.values() for s in found]
