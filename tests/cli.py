"""Run the real ``bae`` CLI in a subprocess, as a user or CI would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "support_triage.py")
LMS = str(ROOT / "tests" / "lms.py")


def bae(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input: str | None = None,
):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "BAE_DEBUG": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bae_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment,
        input=input,
    )


def bae_popen(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "BAE_DEBUG": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "bae_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=environment,
    )
