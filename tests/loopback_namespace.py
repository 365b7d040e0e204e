"""Tests marked ``ray`` start Ray: they run only where nothing but loopback is up, from the one test command.

Ray's processes talk over the machine's network address, and tests talk to 127.0.0.1 only. So a ``ray``
test runs where ``lo`` is the only interface up (``bench.common.interfaces_up``); anywhere else (the
README's test command, CI) this session runs the selected ``ray`` tests once, in a child pytest inside a
new network namespace with only loopback up (``bench.common.loopback_only``: ``unshare -n``, or ``-rn``
when not root), and each of them reports the child's verdict here: passed, failed with the child's
report, or skipped. Their fixtures do nothing out here (``isolated()`` is False), and their bodies never
run outside the namespace. Where no namespace can be made they are skipped, or fail when ``$CI`` is set;
``BAE_REQUIRE_ALL=1`` counts such a skip as a failure too (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bench.common import ROOT, can_isolate, interfaces_up, loopback_only

REPORT = "BAE_RAY_CHILD_REPORT"  # set in the child: where it writes each test's verdict
CHILD_TIMEOUT_S = 1800


@cache
def isolated() -> bool:
    """Whether this process is in a network namespace with only loopback up (where Ray may start)."""
    return interfaces_up() == ["lo"]


def refuse(reason: str) -> None:
    """Skip a Ray test that cannot run here, or fail it in CI, which must never skip them silently."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ray: starts Ray; runs in a loopback-only network namespace (tests/loopback_namespace.py)"
    )


class _Child:
    """The child session's verdicts by test id, run at the first ``ray`` test this session reaches."""

    def __init__(self) -> None:
        self.verdicts: dict[str, dict[str, str]] | None = None
        self.failure: str | None = None

    def verdict(self, item: pytest.Item) -> dict[str, str]:
        if self.verdicts is None:
            self._run([i.nodeid for i in item.session.items if i.get_closest_marker("ray")])
        assert self.verdicts is not None
        found = self.verdicts.get(item.nodeid)
        if found is not None:
            return found
        return {"outcome": "failed", "text": self.failure or "the child session did not run this test"}

    def _run(self, nodeids: list[str]) -> None:
        self.verdicts = {}
        why = can_isolate()
        if why is not None:
            self.verdicts = {n: {"outcome": "refused", "text": f"no loopback-only namespace: {why}"} for n in nodeids}
            return
        with tempfile.TemporaryDirectory(prefix="bae-ray-tests-") as folder:
            report = Path(folder) / "report.json"
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodeids]
            try:
                child = subprocess.run(
                    loopback_only(command), cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                    env={**os.environ, REPORT: str(report)},
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                self.failure = f"the child session timed out after {exc.timeout} s"
                return
            if report.exists():
                self.verdicts = json.loads(report.read_text())
            self.failure = f"child pytest exited {child.returncode}:\n{child.stdout[-6000:]}\n{child.stderr[-3000:]}"


_CHILD = _Child()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A ``ray`` test outside the namespace: the child session's verdict instead of running its body here."""
    if pyfuncitem.get_closest_marker("ray") is None or isolated():
        return None
    verdict = _CHILD.verdict(pyfuncitem)
    if verdict["outcome"] == "passed":
        return True
    if verdict["outcome"] == "refused":
        refuse(verdict["text"])
    if verdict["outcome"] == "skipped":
        pytest.skip(verdict["text"])
    pytest.fail(f"in the loopback-only namespace:\n{verdict['text']}", pytrace=False)
    return None


# -- in the child: each test's verdict, for the parent to report -------------------------------------
_VERDICTS: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not os.environ.get(REPORT):
        return
    verdict = _VERDICTS.setdefault(report.nodeid, {"outcome": "passed", "text": ""})
    if report.failed:
        text = f"{report.when}: {report.longreprtext}"
        verdict.update(outcome="failed", text=f"{verdict['text']}\n{text}".strip())
    elif report.skipped and verdict["outcome"] != "failed":
        reason: Any = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        verdict.update(outcome="skipped", text=str(reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT)
    if path:
        Path(path).write_text(json.dumps(_VERDICTS))
