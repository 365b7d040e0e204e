"""Scripted LMs for recording and reviewing, importable as ``--lm tests/review_lms.py:<factory>``.

They answer the example's tickets and say how sure they are, the way a real engine's logprobs do
(``ScriptedLM(confidence=...)``), so record files carry confidences and ``bae review`` can order by them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from dspy.utils.exceptions import LMServerError

from bae.predictors import PredictorCall
from bae.testing import ScriptedLM
from tests import lms


def sureness(call: PredictorCall) -> float:
    """A confidence fixed by the ticket: the same ticket is always as sure, tickets differ."""
    text = str(call.inputs.get("text", ""))
    return round(0.05 + (sum(map(ord, text)) % 90) / 100, 2)


def confident() -> ScriptedLM:
    """The example's gold answers (``tests.lms.triage_lm``), each call as sure as its ticket says."""
    lm = lms.triage_lm()
    lm.confidence = {"Triage.choice": sureness, **dict.fromkeys(lms.QUEUES, sureness)}
    return lm


def student() -> ScriptedLM:
    """A weak model: every ticket to BillingIssue with the wrong fields, unsure (0.2) of every answer."""
    return ScriptedLM(
        make={queue: {k: v for k, v in lms.WRONG.items() if k in fields} for queue, fields in FIELDS.items()},
        choose={"Triage": "BillingIssue"},
        confidence={"Triage.choice": 0.2, **dict.fromkeys(lms.QUEUES, 0.2)},
    )


FIELDS = {
    "BillingIssue": ("priority", "refund_requested"),
    "TechnicalIssue": ("priority", "product_area"),
    "AccountIssue": ("priority", "action"),
}


def busy() -> ScriptedLM:
    """``confident`` answering after 50 ms a call, so a server's concurrent runs overlap."""
    lm = confident()
    lm.delay_s = 0.05
    return lm


def down() -> ScriptedLM:
    """A teacher whose every request is a 503: down."""
    lm = lms.triage_lm()
    lm.faults["Triage.choice"] = [LMServerError("unavailable", status=503, retry_after=0) for _ in range(400)]
    return lm


def counting() -> ScriptedLM:
    """``tests.lms.oracle`` that notes each call in ``teacher.calls`` in the working directory (a teacher that
    must not be asked: the test reads the file)."""
    lm = lms.triage_lm()
    lock = threading.Lock()
    original = lm.answer

    def noted(messages: Any) -> Any:
        with lock, open(Path("teacher.calls"), "a") as handle:
            handle.write(f"{time.monotonic()}\n")
        return original(messages)

    lm.answer = noted  # type: ignore[method-assign]
    return lm
