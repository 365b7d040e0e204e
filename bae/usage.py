"""Per-node usage from call records: the "which nodes ran optimized?" table of ``bae run``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from bae.result import CallRecord


@dataclass
class UsageRow:
    node: str
    kind: str
    calls: int = 0
    optimized: int = 0
    naive: int = 0
    stale: int = 0
    errors: int = 0
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("latency_s")
        data["mean_latency_s"] = round(self.mean_latency_s, 4)
        return data


def lm_usage(calls: Iterable[CallRecord]) -> dict[str, int]:
    """LM requests (retries included) and tokens of a set of calls: what a stage of work cost."""
    calls = list(calls)
    return {
        "calls": sum(c.attempts for c in calls),
        "prompt_tokens": sum(c.prompt_tokens or 0 for c in calls),
        "completion_tokens": sum(c.completion_tokens or 0 for c in calls),
    }


def usage_rows(calls: Iterable[CallRecord]) -> list[UsageRow]:
    """Calls summed per (node, kind), in first-seen order."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for call in calls:
        row = rows.setdefault((call.node, call.kind), UsageRow(call.node, call.kind))
        row.calls += 1
        setattr(row, call.source, getattr(row, call.source) + 1)
        row.errors += call.error is not None
        row.latency_s += call.latency_s
        row.prompt_tokens += call.prompt_tokens or 0
        row.completion_tokens += call.completion_tokens or 0
    return list(rows.values())
