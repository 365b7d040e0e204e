"""The benchmarks keep working: each one's smoke mode runs and writes a well-formed results file.

Nothing here asserts speed (other work shares the machine); ``bench/results`` holds the
real figures, written by the full runs.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = [
    "overhead", "startup", "batch", "load", "compile_quality", "serve", "local_engine", "ticket_speed", "engines",
    "review_loop",
]  # fmt: skip
MARKS = {
    "local_engine": pytest.mark.local,  # loads the embedded model even in smoke mode
    "ticket_speed": pytest.mark.local,
    "engines": pytest.mark.ray,  # starts Ray: in the loopback-only namespace (tests/loopback_namespace.py)
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=MARKS[n]) if n in MARKS else n for n in SCRIPTS])
def test_smoke_run_writes_its_results(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = importlib.import_module(f"bench.{name}")
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["benchmark"] == name and results["smoke"] is True
    assert results["command"] == f"python -m bench.{name} --smoke --out {tmp_path}"
    assert results["machine"]["cpus"] >= 1 and results["machine"]["python"]
    assert results["parameters"] and results["figures"]
    table = results["table"]
    assert table["rows"] and all(len(row) == len(table["columns"]) for row in table["rows"])
    assert table["markdown"] in capsys.readouterr().out
    for target in results["targets"]:
        assert isinstance(target["value"], float) and target["op"] in ("<=", ">=") and isinstance(target["met"], bool)
    assert list(tmp_path.iterdir()) == [tmp_path / f"{name}.json"]  # nothing else left behind
    if name in RAN:
        RAN[name](results["figures"])


def _overhead_ran(figures: dict[str, Any]) -> None:
    """Each row measured what its label says: compiled predictors with demos, or naive ones without."""
    optimized, naive = figures["optimized"]["ran"], figures["naive"]["ran"]
    assert optimized["sources"]["optimized"] > 0, optimized
    assert optimized["sources"]["naive"] == optimized["sources"]["stale"] == optimized["sources"]["errors"] == 0
    assert all(optimized["demos_per_call"][side]["min"] > 0 for side in ("bae", "raw")), optimized
    assert naive["sources"]["naive"] > 0 and naive["sources"]["optimized"] == naive["sources"]["stale"] == 0, naive
    assert all(naive["demos_per_call"][side]["max"] == 0 for side in ("bae", "raw")), naive


def _compiled_ran(figures: dict[str, Any]) -> None:
    """Every measured row of a benchmark of the compiled version ran its compiled predictors, none naive."""
    ran = {key: figure["ran"] for key, figure in figures.items() if isinstance(figure, dict) and "ran" in figure}
    assert ran, figures
    for key, sources in ran.items():
        assert sources["optimized"] > 0 and sources["naive"] == sources["stale"] == 0, (key, sources)


def _review_loop_ran(figures: dict[str, Any]) -> None:
    """Every recorded input was reviewed (auto-accepted or by the person) and joined the new version's training."""
    review = figures["review"]
    decided = review["auto_accepted"]["auto_accepted"] + review["person"]["accepted"] + review["person"]["changed"]
    assert decided == figures["reviewed_traces"] == review["recorded_answers"]["inputs"] > 0, review
    assert review["person"]["remaining"] == 0 and not review["person"]["interrupted"], review


RAN: dict[str, Callable[[dict[str, Any]], None]] = {
    "review_loop": _review_loop_ran,
    "overhead": _overhead_ran,
    "batch": _compiled_ran,
    "serve": _compiled_ran,
}


def test_every_benchmark_is_tested() -> None:
    shared = {"__init__", "common", "scripted", "typer_floor"}
    scripts = {p.stem for p in Path(__file__).resolve().parent.parent.joinpath("bench").glob("*.py")} - shared
    assert scripts == set(SCRIPTS)
