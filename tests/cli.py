"""Run the real ``bae`` CLI in a subprocess, as a user or CI would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "support_triage.py")
LMS = str(ROOT / "tests" / "lms.py")


def environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this checkout importable, no ``--debug`` tracebacks from the caller's shell, ``env``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "BAE_DEBUG": "", **(env or {})}


def bae(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input: str | None = None,
):
    return subprocess.run(
        [sys.executable, "-m", "bae_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(env),
        input=input,
    )


def bae_popen(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bae_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=environment(),
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until ``condition()`` holds: fail at once if ``proc`` exits first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
