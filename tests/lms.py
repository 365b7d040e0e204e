"""Scripted LMs for the example graph, importable as ``--lm tests/lms.py:<factory>``.

They answer from the example's gold traces, so compile and run exercise every real
code path while the "model" stays deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bae.compiler import PredictorCall
from bae.testing import ScriptedLM

DATASET = Path(__file__).resolve().parent.parent / "examples" / "support_triage.train.jsonl"
QUEUES = ("BillingIssue", "TechnicalIssue", "AccountIssue")
WRONG = {"priority": "low", "refund_requested": False, "product_area": "api", "action": "change email"}


def gold() -> dict[str, dict[str, Any]]:
    """Ticket text -> the gold queue node of that trace."""
    answers = {}
    for line in DATASET.read_text().splitlines():
        trace = json.loads(line)["trace"]
        answers[trace[0]["fields"]["text"]] = trace[-1]
    return answers


def triage_lm(needs_demos: bool = False, delay_s: float = 0.0) -> ScriptedLM:
    """Gold answers; with ``needs_demos`` only when the prompt carries few-shot demos (like a base model)."""
    answers = gold()

    def knows(call: PredictorCall) -> dict[str, Any] | None:
        if needs_demos and call.demos == 0:
            return None
        return answers.get(call.inputs.get("text", ""))

    def make(node: str) -> Any:
        def answer(call: PredictorCall) -> dict[str, Any]:
            known = knows(call)
            if known is None or known["node"] != node:
                return {k: v for k, v in WRONG.items() if k in _fields(node)}
            return {k: v for k, v in known["fields"].items() if k not in ("text", "plan")}

        return answer

    def choose(call: PredictorCall) -> str:
        known = knows(call)
        return known["node"] if known else "BillingIssue"

    return ScriptedLM(make={q: make(q) for q in QUEUES}, choose={"Triage": choose}, delay_s=delay_s)


def _fields(node: str) -> set[str]:
    return {
        "BillingIssue": {"priority", "refund_requested"},
        "TechnicalIssue": {"priority", "product_area"},
        "AccountIssue": {"priority", "action"},
    }[node]


def oracle() -> ScriptedLM:
    return triage_lm()


def fewshot() -> ScriptedLM:
    return triage_lm(needs_demos=True)


def slow() -> ScriptedLM:
    return triage_lm(delay_s=0.01)


def interrupting() -> ScriptedLM:
    """Answers a few calls, then behaves like Ctrl-C arriving mid-compile."""
    lm = triage_lm()
    lm.faults["BillingIssue"] = [KeyboardInterrupt()]
    return lm


def exact_metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    """A user metric for ``--metric``: every labelled field must match exactly."""
    return all(getattr(prediction, name, None) == example[name] for name in example.labels())


def garbled_billing() -> ScriptedLM:
    """Routes correctly, then never produces parseable BillingIssue fields."""
    lm = triage_lm()
    lm.faults["BillingIssue"] = ["not json"] * 10
    return lm
