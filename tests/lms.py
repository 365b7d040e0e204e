"""Scripted LMs for the example graph, importable as ``--lm tests/lms.py:<factory>``.

They answer from the example's gold traces, so compile and run exercise every real
code path while the "model" stays deterministic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dspy.utils.exceptions import LMRateLimitError, LMServerError, LMTimeoutError

from bae.predictors import PredictorCall
from bae.testing import ScriptedLM
from tests.cli import TRAIN

TRACES: list[list[dict[str, Any]]] = [json.loads(line)["trace"] for line in TRAIN.read_text().splitlines()]
"""The example's gold traces in file order, shared by the tests: copy one before changing it."""
QUEUES = ("BillingIssue", "TechnicalIssue", "AccountIssue")
WRONG = {"priority": "low", "refund_requested": False, "product_area": "api", "action": "change email"}


def gold() -> dict[str, dict[str, Any]]:
    """Ticket text -> the gold queue node of that trace."""
    return {trace[0]["fields"]["text"]: trace[-1] for trace in TRACES}


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


def first_last() -> ScriptedLM:
    """Routes the example's first ticket only once three tickets' queues were filled: a batch of the first
    four tickets at concurrency 4 finishes its first input last."""
    lm = triage_lm()
    first, route = TRACES[0][0]["fields"]["text"], lm.script["Triage.choice"]

    def late(call: PredictorCall) -> Any:
        if call.inputs.get("text") == first:
            deadline = time.monotonic() + 60
            while sum(c.kind == "make" for c in lm.calls) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # and the runs they belong to have ended
        return route(call)

    lm.script["Triage.choice"] = late
    return lm


def interrupting() -> ScriptedLM:
    """Answers a few calls, then behaves like Ctrl-C arriving mid-compile."""
    lm = triage_lm()
    lm.faults["BillingIssue"] = [KeyboardInterrupt()]
    return lm


def exact_metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    """A user metric for ``--metric``: every labelled field must match exactly."""
    return all(getattr(prediction, name, None) == example[name] for name in example.labels())


def priority_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    """A user metric that judges the priority alone (a choice predictor's example has none: exact choice)."""
    if "priority" not in example.labels():
        return float(getattr(prediction, "next_step", None) == example["next_step"])
    return float(getattr(prediction, "priority", None) == example["priority"])


def raising_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    """A user metric with a bug in it."""
    return example["no_such_field"]


def wordy_metric(example: Any, prediction: Any, trace: Any = None) -> Any:
    """A user metric that answers in words instead of a number."""
    return "looks right"


def garbled_billing() -> ScriptedLM:
    """Routes correctly, then never produces parseable BillingIssue fields."""
    lm = triage_lm()
    lm.faults["BillingIssue"] = ["not json"] * 10
    return lm


# -- faults as DSPy raises them for a hosted model (its canonical LM errors), for the fault tests --
def faulty() -> ScriptedLM:
    """Run with --concurrency 1 on the batch of test_faults: faults land on inputs in order.

    Input 1: rate limited on every retry (fails, an LM error). Input 2: routed, then empty and
    garbage answers until self-correction gives up (fails, a parse error). Input 3: a timeout and
    a 503, then answers (recovers). The rest: clean.
    """
    lm = triage_lm()
    lm.faults["Triage.choice"] = [LMRateLimitError("rate limited", status=429, retry_after=0.01) for _ in range(4)]
    lm.faults["BillingIssue"] = ["", "<html><body>502 Bad Gateway</body></html>", "Sure! Here is the JSON:"]
    timeout, unavailable = LMTimeoutError("timed out"), LMServerError("unavailable", status=503, retry_after=0.01)
    lm.faults["TechnicalIssue"] = [timeout, unavailable]
    return lm


def down() -> ScriptedLM:
    """Every request gets 503 Service Unavailable (Retry-After: 0): the LM is down."""
    lm = triage_lm()
    lm.faults["Triage.choice"] = [LMServerError("unavailable", status=503, retry_after=0) for _ in range(400)]
    return lm


def sluggish() -> ScriptedLM:
    """A slow model (50 ms a call), so a batch is still running when the test interrupts it."""
    return triage_lm(delay_s=0.05)


def stuck() -> ScriptedLM:
    """A hung model: its first request creates ``stuck.mark`` in the working directory, then no answer comes."""

    def hang(call: PredictorCall) -> Any:
        Path("stuck.mark").touch()
        time.sleep(3600)

    return ScriptedLM(make=dict.fromkeys(QUEUES, hang), choose={"Triage": hang})
