"""Scripted LMs for the Ray tests, copied into each test's project directory as ``lms.py`` (``--lm lms.py:oracle``).

Self-contained (the project directory is what a cluster's workers get), and each factory leaves evidence
of where it was built: a Ray worker writes its node, process and working directory to the folder named in
``where.txt`` beside this file, so a test can tell which nodes ran the batch and that the code it ran
was the shipped copy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from dspy.utils.exceptions import LMServerError

from bae.predictors import PredictorCall
from bae.testing import ScriptedLM

QUEUES = ("BillingIssue", "TechnicalIssue", "AccountIssue")
FIELDS: dict[str, dict[str, Any]] = {
    "BillingIssue": {"priority": "high", "refund_requested": True},
    "TechnicalIssue": {"priority": "medium", "product_area": "api"},
    "AccountIssue": {"priority": "low", "action": "reset password"},
}


def _where() -> None:
    """In a Ray worker, record where this LM was built (the driver builds one too, before Ray starts)."""
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        return
    import ray

    folder = Path((Path(__file__).parent / "where.txt").read_text().strip())
    place = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "file": str(Path(__file__))}
    (folder / f"{os.getpid()}.json").write_text(json.dumps(place))
    with open(folder / f"built-{os.getpid()}", "a") as built:  # how many times this process built an LM
        built.write(".\n")


def _choose(call: PredictorCall) -> str:
    """A queue by the ticket's text; in a Ray worker the call is also counted (a line in ``calls-<pid>``), so a
    test can act mid-batch without reading the run log the command is writing."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        folder = Path((Path(__file__).parent / "where.txt").read_text().strip())
        with open(folder / f"calls-{os.getpid()}", "a") as counted:
            counted.write(".\n")
    return QUEUES[sum(map(ord, str(call.inputs.get("text", "")))) % len(QUEUES)]


def scripted(delay_s: float = 0.0) -> ScriptedLM:
    _where()
    return ScriptedLM(make=FIELDS, choose={"Triage": _choose}, delay_s=delay_s, model="tests/scripted")


def oracle() -> ScriptedLM:
    return scripted()


def slow() -> ScriptedLM:
    """50 ms a call: a batch long enough to kill a worker or press Ctrl-C in the middle of."""
    return scripted(0.05)


def down() -> ScriptedLM:
    """Every request gets 503 Service Unavailable (Retry-After: 0)."""
    lm = scripted()
    lm.faults["Triage.choice"] = [LMServerError("unavailable", status=503, retry_after=0) for _ in range(400)]
    return lm
