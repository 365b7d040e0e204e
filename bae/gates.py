"""The CI gates of ``bae eval``: a version's score against a threshold, and a version against a baseline.

``min_score`` every version asked for must reach (not the naive graph, nor a baseline evaluated only for
comparison); ``baseline``/``max_drop`` bounds how far the first column may fall below the baseline on this
dataset. A gate is judged, never raised: the caller decides what a failed one means (the CLI: exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bae.evaluation import VERSION
from bae.wording import score_text

if TYPE_CHECKING:
    from bae.evaluation import Column

TOLERANCE = 1e-9  # scores are means of floats: 0.8 must reach 0.8


@dataclass
class Gate:
    """One CI check on the result: ``min-score`` (a version against a threshold) or ``baseline``."""

    gate: str
    version: str
    score: float
    threshold: float
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "version": self.version,
            "score": round(self.score, 4),
            "threshold": round(self.threshold, 4),
            "passed": self.passed,
            "message": self.message,
        }


def judge(
    columns: Sequence[Column], min_score: float | None, baseline: str | None, max_drop: float | None
) -> list[Gate]:
    """``min_score``: each version asked for reaches it. ``baseline``: the first column scores at most
    ``max_drop`` (default 0) below the baseline's column."""
    gates = []
    if min_score is not None:
        for column in (c for c in columns if c.role == VERSION):
            score = column.score.score
            passed = score >= min_score - TOLERANCE
            verdict = "reaches" if passed else f"{score_text(min_score - score)} below"
            message = f"{column.name} scored {score_text(score)}: {verdict} --min-score {min_score:g}"
            gates.append(Gate("min-score", column.name, score, min_score, passed, message))
    if baseline is not None:
        first = columns[0]
        base = next(c for c in columns if c.name == baseline)
        allowed = max_drop or 0.0
        drop = base.score.score - first.score.score
        passed = drop <= allowed + TOLERANCE
        how = f"{score_text(drop)} below" if drop > 0 else f"{score_text(-drop)} above" if drop < 0 else "level with"
        message = (
            f"{first.name} scored {score_text(first.score.score)}, {how} baseline {baseline} "
            f"({score_text(base.score.score)}): --max-drop allows {allowed:g}"
        )
        gates.append(Gate("baseline", first.name, first.score.score, base.score.score - allowed, passed, message))
    return gates
