"""Scripted LMs and inputs for benchmarking the example graph, usable as ``--lm bench/scripted.py:instant``.

The answers are canned (a queue picked from the ticket text, fixed fields per queue), so
a benchmark measures bae and DSPy, never a model. Every queue is reached, so a run of
many tickets exercises all five nodes of the example graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bae.predictors import PredictorCall
from bae.testing import ScriptedLM

DATASET = Path(__file__).resolve().parent.parent / "examples" / "support_triage.train.jsonl"
QUEUES = ("BillingIssue", "TechnicalIssue", "AccountIssue")
FIELDS: dict[str, dict[str, Any]] = {
    "BillingIssue": {"priority": "high", "refund_requested": True},
    "TechnicalIssue": {"priority": "medium", "product_area": "api"},
    "AccountIssue": {"priority": "low", "action": "reset password"},
}
SLOW_CALL_S = 0.05


def queue_for(text: str) -> str:
    """The canned routing decision for a ticket: deterministic, and spread over every queue."""
    return QUEUES[sum(map(ord, text)) % len(QUEUES)]


def _choose(call: PredictorCall) -> str:
    return queue_for(str(call.inputs.get("text", "")))


def scripted(delay_s: float = 0.0) -> ScriptedLM:
    """The canned LM; ``delay_s`` stands in for the model's latency (a sleep, which frees the GIL)."""
    return ScriptedLM(make=FIELDS, choose={"Triage": _choose}, delay_s=delay_s, model="bench/scripted")


def instant() -> ScriptedLM:
    """Answers at once: what is left of a run's time is bae's and DSPy's."""
    return scripted()


def slow() -> ScriptedLM:
    """Sleeps 50 ms per call, like a fast hosted model."""
    return scripted(SLOW_CALL_S)


def tickets(n: int) -> list[dict[str, str]]:
    """``n`` start inputs for the example graph: the dataset's tickets, cycled."""
    starts = [json.loads(line)["trace"][0]["fields"] for line in DATASET.read_text().splitlines() if line.strip()]
    return [starts[i % len(starts)] for i in range(n)]


def write_batch(path: Path, n: int) -> Path:
    """A ``bae run --batch`` file of ``n`` tickets."""
    path.write_text("".join(json.dumps(t) + "\n" for t in tickets(n)))
    return path
