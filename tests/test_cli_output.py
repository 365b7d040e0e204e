"""Tables read whole in a CI log: stdout there is a pipe or a file, not a terminal.

How wide the consoles draw is decided as a process starts (the stream it has, ``$COLUMNS``): those tests
run ``bae`` in a real process with stdout a pipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import LMS, ROOT, bae, bae_process

TICKET = {"customer_email": "ana@northwind.io", "text": "I was charged twice for INV-2231, please refund."}
# compiled/v1's note: the widest cell
NOTE = "example graph, embedded gemma-3-270m, knn (the default), hidden-state decisions"


@pytest.fixture(scope="module")
def log_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("log") / "runs.db"
    run = bae("run", "--compiled", str(ROOT / "compiled"), "--lm", f"{LMS}:oracle", "--log-db", str(db),
              "--input", json.dumps(TICKET))  # fmt: skip
    assert run.returncode == 0, run.stderr
    return db


def test_tables_stay_whole_when_stdout_is_not_a_terminal(log_db: Path) -> None:
    result = bae_process("stats", "--compiled", str(ROOT / "compiled"), "--log-db", str(log_db), env={"COLUMNS": None})
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout, result.stdout  # Rich's 80-column fallback cut cells: "optimi…"
    lines = result.stdout.splitlines()
    assert any("v1 (active)" in line and NOTE in line for line in lines), result.stdout  # a row is one line
    assert any("Triage.choice" in line and "ms" in line for line in lines), result.stdout  # latency not wrapped


def test_columns_is_honoured(log_db: Path) -> None:
    result = bae_process("stats", "--compiled", str(ROOT / "compiled"), "--log-db", str(log_db), env={"COLUMNS": "100"})
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
