"""Tables read whole in a CI log: stdout there is a pipe or a file, not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import LMS, ROOT

TICKET = {"customer_email": "ana@northwind.io", "text": "I was charged twice for INV-2231, please refund."}
NOTE = "example graph, embedded gemma-3-270m, knn (the default)"  # compiled/v1's note: the widest cell


def bae(*args: str, columns: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI with stdout a pipe (as in CI), ``$COLUMNS`` unset unless given."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(PYTHONPATH=str(ROOT), BAE_DEBUG="", **({"COLUMNS": columns} if columns else {}))
    return subprocess.run([sys.executable, "-m", "bae_cli", *args], capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def log_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("log") / "runs.db"
    run = bae("run", "--compiled", str(ROOT / "compiled"), "--lm", f"{LMS}:oracle", "--log-db", str(db),
              "--input", json.dumps(TICKET))  # fmt: skip
    assert run.returncode == 0, run.stderr
    return db


def test_tables_stay_whole_when_stdout_is_not_a_terminal(log_db: Path) -> None:
    result = bae("stats", "--compiled", str(ROOT / "compiled"), "--log-db", str(log_db))
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout, result.stdout  # Rich's 80-column fallback cut cells: "optimi…"
    lines = result.stdout.splitlines()
    assert any("v1 (active)" in line and NOTE in line for line in lines), result.stdout  # a row is one line
    assert any("Triage.choice" in line and "ms" in line for line in lines), result.stdout  # latency not wrapped


def test_columns_is_honoured(log_db: Path) -> None:
    result = bae("stats", "--compiled", str(ROOT / "compiled"), "--log-db", str(log_db), columns="100")
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 100, result.stdout
    assert not any(NOTE in line for line in result.stdout.splitlines())  # the note had to wrap at 100


def test_scores_read_the_same_in_every_command(log_db: Path) -> None:
    """compile and eval print scores to 3 decimals; inspect, versions and stats printed the manifest's
    own (``naive 0.381 -> optimized 0.5238``). --json keeps the full values."""
    compiled = str(ROOT / "compiled")
    scores = json.loads((ROOT / "compiled" / "v1" / "manifest.json").read_text())["scores"]
    naive, optimized = f"{scores['naive']:.3f}", f"{scores['optimized']:.3f}"
    assert str(scores["optimized"]) != optimized  # the manifest holds more digits than people are shown
    shown = {
        command: bae(*args).stdout
        for command, args in {
            "inspect": ("inspect", compiled),
            "versions": ("versions", compiled),
            "stats": ("stats", "--compiled", compiled, "--log-db", str(log_db)),
        }.items()
    }
    assert f"dev score naive {naive} -> optimized {optimized}" in shown["inspect"], shown["inspect"]
    assert f"naive {naive} -> optimized {optimized}" in shown["versions"], shown["versions"]
    assert f"{naive} -> {optimized}" in shown["stats"], shown["stats"]
    assert not [command for command, text in shown.items() if str(scores["optimized"]) in text]
    listed = json.loads(bae("versions", compiled, "--json").stdout)
    assert listed[0]["optimized_score"] == scores["optimized"]
