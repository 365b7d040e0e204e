"""What a newcomer reads: messages that say what happened in the user's terms, and what to do.

Each test runs the real CLI in a subprocess on the example graph and checks the line the user sees;
refusals (one ``bae: error:`` line, nothing written) are in ``test_bad_input``'s table.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import EXAMPLE, LMS, ROOT, bae

TRAIN = Path(EXAMPLE).with_name("support_triage.train.jsonl")
ORACLE = f"{LMS}:oracle"
COMPILED = ROOT / "compiled"


def test_a_count_of_one_is_singular(tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(TRAIN.read_text().splitlines()[0] + "\n")
    result = bae("eval", EXAMPLE, "--compiled", str(COMPILED), "--dataset", str(one), "--lm", ORACLE, "--no-log")
    assert result.returncode == 0, result.stderr
    assert f"1 trace from {one}" in result.stdout, result.stdout
    assert "1 traces" not in result.stdout

