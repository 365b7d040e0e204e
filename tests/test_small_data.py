"""Small data is not silent: compile warns about what its dev split cannot measure, and a version that
optimized nothing is written but not activated unless ``--activate`` asks for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bae.compiler import CompileOptions, compile_graph
from bae.loader import load_graph
from tests import lms
from tests.cli import EXAMPLE, LMS, TRAIN, bae

LINES = TRAIN.read_text().splitlines()  # sorted by queue: 28 billing, 28 technical, 29 account
BILLING, TECHNICAL, ACCOUNT = LINES[:28], LINES[28:56], LINES[56:]


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def warnings_of(tmp_path: Path, train: list[str], dev: list[str] | None = None) -> list[str]:
    options = CompileOptions(trainset=jsonl(tmp_path / "train.jsonl", train), out=tmp_path / "c")
    if dev is not None:
        options.devset = jsonl(tmp_path / "dev.jsonl", dev)
    warnings: list[str] = compile_graph(load_graph(EXAMPLE), lms.oracle(), options).manifest["warnings"]
    return warnings


def test_the_queues_are_where_the_test_expects_them() -> None:
    assert {json.loads(line)["trace"][-1]["node"] for line in BILLING} == {"BillingIssue"}
    assert {json.loads(line)["trace"][-1]["node"] for line in TECHNICAL} == {"TechnicalIssue"}
    assert {json.loads(line)["trace"][-1]["node"] for line in ACCOUNT} == {"AccountIssue"}


def test_a_dev_split_of_every_class_and_enough_traces_has_nothing_to_warn_about(tmp_path: Path) -> None:
    assert warnings_of(tmp_path, LINES) == []  # the example: 64 train, 21 dev


def test_a_dev_split_that_misses_a_class_says_what_goes_unmeasured(tmp_path: Path) -> None:
    dev = BILLING[:10] + TECHNICAL[:10]
    train = [line for line in LINES if line not in dev]
    assert warnings_of(tmp_path, train, dev) == [
        "AccountIssue.make learned from 29 training examples but dev has none: the dev score does not measure it",
        "Triage.choice: 29 training traces choose AccountIssue but no dev trace does: the dev score does not "
        "measure that choice",
    ]


def test_a_dev_answer_the_training_data_never_shows_is_named(tmp_path: Path) -> None:
    dev = BILLING[:8] + TECHNICAL[:8] + ACCOUNT[:8]
    train = BILLING[8:] + TECHNICAL[8:]
    assert warnings_of(tmp_path, train, dev) == [
        "Triage.choice: 8 dev traces choose AccountIssue but no training trace does: the optimizer never saw that "
        "answer"
    ]


def test_a_tiny_dev_split_is_warned_about_with_its_interval(tmp_path: Path) -> None:
    """The issue's case: 10 traces, so the default split holds out 2, and not every queue among them."""
    small = jsonl(tmp_path / "small.jsonl", BILLING[:4] + TECHNICAL[:3] + ACCOUNT[:3])
    result = bae("compile", EXAMPLE, "--trainset", str(small), "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle",
                 "--json", "--min-examples", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = json.loads((tmp_path / "c" / "v1" / "manifest.json").read_text())
    low, high = report["scores"]["optimized_interval"]
    assert manifest["dataset"]["dev"] == 2 and report["warnings"][0] == (
        "dev has 2 traces (fewer than 20): one trace moves a score by 0.500, and resampling this few cannot show how "
        f"much scores vary (the optimized score's 95% interval: [{low:.3f}, {high:.3f}]); add gold traces or give a "
        "larger --devset"
    )
    assert len(report["warnings"]) > 1  # 2 traces cannot hold every queue's choice and make steps
    shown = [line.removeprefix("warning: ") for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert shown == report["warnings"] == manifest["warnings"]


# -- activation -----------------------------------------------------------------------------------
def compile_cli(root: Path, *flags: str) -> tuple[dict[str, Any], str]:
    """Compile on a small dev file (fast), as JSON and as text: (the JSON report, what the text run printed)."""
    dev = jsonl(root.parent / "dev.jsonl", BILLING[:2] + TECHNICAL[:2] + ACCOUNT[:2])
    common = ("compile", EXAMPLE, "--out", str(root), "--devset", str(dev), "--lm", f"{LMS}:oracle", *flags)
    text = bae(*common)
    assert text.returncode == 0, text.stderr
    report = bae(*common, "--json")
    assert report.returncode == 0, report.stderr
    return json.loads(report.stdout), text.stdout.splitlines()[-1]


def active(root: Path) -> str | None:
    value: str | None = json.loads((root / "versions.json").read_text())["active"]
    return value


NOTHING = ("--min-examples", "1000")  # every predictor has fewer examples: nothing is optimized


def test_a_version_that_optimized_nothing_is_not_activated_unless_asked(tmp_path: Path) -> None:
    root = tmp_path / "compiled"
    report, said = compile_cli(root)  # v1 (text) and v2 (json): both optimized, both activated in turn
    assert report["active"] is True and active(root) == "v2" and said.endswith("(active)")

    report, said = compile_cli(root, *NOTHING)  # v3, v4: nothing optimized
    assert {r["status"] for r in report["predictors"]} == {"naive"} and report["active"] is False
    assert active(root) == "v2"
    assert said == (
        "new version v3 at " + str(root / "v3") + " (not active: nothing was optimized, every predictor stayed naive; "
        "v2 stays active (--activate forces it))"
    )

    report, said = compile_cli(root, *NOTHING, "--activate")  # v5, v6: forced
    assert report["active"] is True and active(root) == "v6" and said.endswith("(active)")

    report, said = compile_cli(root, "--no-activate")  # v7, v8: optimized, but never activated
    assert report["active"] is False and active(root) == "v6"
    assert said.endswith("(not active: --no-activate; v6 stays active)")


@pytest.mark.parametrize("flags", [NOTHING, ("--no-activate",)], ids=["nothing-optimized", "no-activate"])
def test_a_first_version_is_not_activated_either(tmp_path: Path, flags: tuple[str, ...]) -> None:
    root = tmp_path / "compiled"
    _, said = compile_cli(root, *flags)
    assert active(root) is None and "no version is active" in said
    result = bae("run", "--compiled", str(root), "--input", "{}", "--lm", f"{LMS}:oracle")
    assert result.returncode == 3 and "has no active version: make one active with `bae promote" in result.stderr
