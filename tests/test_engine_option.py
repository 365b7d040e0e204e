"""``--engine`` outside Ray: refusals before any work, and no path but ``--engine ray`` imports Ray.

Nothing here starts Ray (``tests/test_ray.py`` does, in a loopback-only namespace).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli import EXAMPLE, LMS, bae
from tests.test_cli_basics import imported_by
from tests.workspace import assert_refused

TICKET = '{"customer_email": "ana@northwind.io", "text": "I was charged twice."}'


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(TICKET + "\n")
    return path


def test_without_the_ray_extra_engine_ray_says_how_to_install_it(
    batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a Python without ``ray`` installed answers (``find_spec`` finds nothing), before the graph is read."""
    monkeypatch.setitem(sys.modules, "ray", None)
    install = "--engine ray needs the ray extra: pip install 'bae[ray]'"
    run = bae("run", EXAMPLE, "--batch", str(batch), "--lm", f"{LMS}:oracle", "--no-log", "--engine", "ray")
    assert_refused(run, 2, install)
    dataset = tmp_path / "dev.jsonl"  # never read: the engine is refused first
    evaluated = bae("eval", EXAMPLE, "--dataset", str(dataset), "--naive", "--lm", f"{LMS}:oracle", "--engine", "ray")
    assert_refused(evaluated, 2, install)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--engine", "spark"], "unknown --engine 'spark': choose one of threads, ray"),
        (["--workers", "2"], "--workers goes with --engine ray"),
    ],
)
def test_engine_flags_that_make_no_sense_are_usage_errors(batch: Path, flags: list[str], says: str) -> None:
    assert_refused(bae("run", EXAMPLE, "--batch", str(batch), "--lm", f"{LMS}:oracle", "--no-log", *flags), 2, says)


def test_a_single_input_runs_here_whatever_the_engine() -> None:
    single = bae("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--no-log", "--input", TICKET, "--engine", "ray")
    assert_refused(single, 2, "--engine and --workers go with --batch")


def test_help_teaches_the_engine() -> None:
    shown = bae("run", "--help", env={"COLUMNS": "200"}).stdout
    assert "--engine" in shown and "--workers" in shown and "RAY_ADDRESS" in shown


def test_only_engine_ray_imports_ray(batch: Path) -> None:
    """Ray and Ray Data take seconds and hundreds of MB to import: help and a threaded batch never pay it."""
    is_ray = "m == 'ray' or m.startswith('ray.') or m in ('pyarrow', 'pandas')"
    assert imported_by(["--help"], is_ray) == []
    assert imported_by(["run", "--help"], is_ray) == []
    assert imported_by(["eval", "--help"], is_ray) == []
    threaded = ["run", EXAMPLE, "--batch", str(batch), "--lm", f"{LMS}:oracle", "--no-log", "--engine", "threads"]
    assert imported_by(threaded, is_ray) == []
