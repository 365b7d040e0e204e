"""``python -m bench.serve --smoke``: the server benchmark runs end to end and writes its results file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import ROOT

pytest.importorskip("fastapi")


def test_serve_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "serve.json").read_text())
    assert result["benchmark"] == "serve" and result["smoke"] is True
    figures = result["figures"]
    assert figures["in_flight_1"]["efficiency"] == 1.0
    assert figures["in_flight_4"]["runs_per_s"]["median"] > figures["in_flight_1"]["runs_per_s"]["median"]
    assert figures["ceiling_instant_lm"]["runs_per_s"]["median"] > 0
    assert [t["what"] for t in result["targets"]] == ["efficiency at 4 in flight (--max-concurrency 4)"]
