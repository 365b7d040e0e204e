"""One metric everywhere: the built-in one judges each made field by its type, and a user's ``--metric``
replaces it in the optimizer, in compile's dev scores, in ``bae eval`` and in its gates.

The end-to-end tests use the scripted few-shot model on 12 fixed dev tickets (3 billing, 5 technical, 4
account): the naive graph routes every ticket to billing and answers ``lms.WRONG`` (priority ``low``,
no refund), so on the 3 billing tickets the built-in metric credits the priority *and* the refund flag,
``lms.priority_metric`` the priority alone: the two give the naive graph visibly different scores.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import dspy
import pytest

import bae
from bae import BaeInputError, Context, Node
from bae.compiler import CompileOptions, compile_graph
from bae.loader import load_graph
from bae.metrics import made_score, metric_for, text_fields
from bae.node import spec_of
from tests import lms
from tests.cli import EXAMPLE, LMS, TRAIN
from tests.cli import bae as run_bae

LINES = TRAIN.read_text().splitlines()  # sorted by queue: billing, technical, account
DEV = LINES[1:4] + LINES[40:45] + LINES[-4:]  # billing: one right, one half right, one wrong by lms.WRONG
BILLING = [json.loads(line)["trace"][-1]["fields"] for line in DEV[:3]]


def naive_score(metric: str) -> float:
    """Every ticket routed to billing with lms.WRONG's fields: only the 3 billing tickets earn, their choice (1)
    and, over the step's 3 parts, the 2 fields' share as the metric judges them."""
    def made(fields: dict[str, Any]) -> float:
        if metric == "priority_metric":
            return float(fields["priority"] == "low")
        return ((fields["priority"] == "low") + (fields["refund_requested"] is False)) / 2

    return sum((1 + 2 * made(f)) / 3 for f in BILLING) / len(DEV)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Training traces, the 12 dev traces, and a compiled root (the built-in metric; the few-shot model)."""
    folder = tmp_path_factory.mktemp("data")
    train, dev, root = folder / "train.jsonl", folder / "dev.jsonl", folder / "compiled"
    train.write_text("\n".join(line for line in LINES if line not in DEV) + "\n")
    dev.write_text("\n".join(DEV) + "\n")
    assert naive_score("priority_metric") != pytest.approx(naive_score("default_metric"))  # the test can tell
    compile_graph(load_graph(EXAMPLE), lms.fewshot(), CompileOptions(trainset=train, devset=dev, out=root))
    return train, dev, root


# -- the built-in metric, by field type ------------------------------------------------------------
class Team(Enum):
    BILLING = "billing"
    ENGINEERING = "engineering"


class Report(Node):
    """A ticket written up for the team."""

    text: Annotated[str, Context("the customer's message")]
    summary: str
    note: str | None = None
    tone: Literal["calm", "angry"]
    urgent: bool
    team: Team
    action: Literal["reset password", "change password"]


def report(**changes: Any) -> Report:
    fields = {"text": "...", "summary": "Charged twice for one invoice.", "note": "call back",
              "tone": "calm", "urgent": True, "team": Team.BILLING, "action": "reset password"}  # fmt: skip
    return Report(**{**fields, **changes})


def test_plain_str_fields_are_open_text_and_the_rest_are_labels() -> None:
    assert text_fields(Report) == {"summary", "note"}


def test_a_short_summary_in_other_words_earns_part_of_the_credit() -> None:
    gold = report()
    reworded = report(summary="The customer was charged twice for an invoice")  # exact match gave 0 before
    # 4 tokens in common (charged twice for invoice), 5 gold, 8 made: P 1/2, R 4/5, F1 8/13; 5 other fields right
    assert made_score(None, gold, reworded) == pytest.approx((8 / 13 + 5) / 6)
    assert made_score(None, gold, report(summary="Refund requested")) == pytest.approx(5 / 6)  # nothing in common
    assert made_score(None, gold, report(summary="charged TWICE, for one invoice")) == 1.0


def test_labels_match_exactly_ignoring_only_case_and_punctuation() -> None:
    gold = report()
    assert made_score(None, gold, report(tone="calm")) == 1.0
    assert made_score(None, gold, report(action="change password")) == pytest.approx(5 / 6)  # one word of two: 0
    assert made_score(None, gold, report(tone="angry")) == pytest.approx(5 / 6)
    assert made_score(None, gold, report(urgent=False)) == pytest.approx(5 / 6)
    assert made_score(None, gold, report(team=Team.ENGINEERING)) == pytest.approx(5 / 6)


def test_the_built_in_metric_takes_the_dspy_form_the_optimizer_calls() -> None:
    metric = metric_for(Report, None)
    gold = dspy.Example(text="...", summary="Charged twice for one invoice.", tone="calm").with_inputs("text")
    made = dspy.Prediction(summary="charged twice for an invoice", tone="calm")
    assert metric(gold, made) == pytest.approx((2 * (4 / 5 * 4 / 5) / (8 / 5) + 1) / 2)  # F1 4/5 and an exact label
    assert metric(gold, made, trace=object()) is False  # while bootstrapping: all or nothing


def test_the_example_graph_makes_only_labels_so_its_recorded_scores_keep_their_meaning() -> None:
    """Every field the example's LM makes is a Literal or a bool: exact under the old rule and the new one."""
    graph = load_graph(EXAMPLE).graph
    made_by_lm = {after for cls in graph.nodes if spec_of(cls).routed for after in spec_of(cls).successors}
    assert {f.name for cls in made_by_lm for f in spec_of(cls).generated} == {
        "priority", "refund_requested", "product_area", "action"
    }  # fmt: skip
    assert all(not text_fields(cls) for cls in made_by_lm)


# -- a user's metric, end to end -------------------------------------------------------------------
def compile_cli(train: Path, dev: Path, out: Path, *flags: str) -> dict[str, Any]:
    result = run_bae("compile", EXAMPLE, "--trainset", str(train), "--devset", str(dev), "--out", str(out),
                     "--lm", f"{LMS}:fewshot", "--json", *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_a_user_metric_scores_compile_eval_and_the_gates(data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train, dev, _ = data
    builtin = compile_cli(train, dev, tmp_path / "builtin")["scores"]
    custom = compile_cli(train, dev, tmp_path / "custom", "--metric", f"{LMS}:priority_metric")["scores"]
    assert builtin["naive"] == pytest.approx(naive_score("default_metric"), abs=1e-4)
    assert custom["naive"] == pytest.approx(naive_score("priority_metric"), abs=1e-4)
    assert (builtin["metric"], custom["metric"]) == ("default_metric", "priority_metric")
    manifest = json.loads((tmp_path / "custom" / "v1" / "manifest.json").read_text())
    assert manifest["scores"] == custom and manifest["optimizer"]["params"]["metric"] == "priority_metric"

    # eval: the same metric gives the score compile recorded, and the gate judges by it. The version gated
    # optimized nothing (too few examples for any predictor), so it scores what the naive graph scores.
    naive_version = tmp_path / "naive"
    compile_cli(train, dev, naive_version, "--min-examples", "1000", "--activate")
    between = (naive_score("default_metric") + naive_score("priority_metric")) / 2
    gate = ("--min-score", f"{between:.4f}")
    verdicts = {}
    for metric in ("default_metric", "priority_metric"):
        flags = () if metric == "default_metric" else ("--metric", f"{LMS}:priority_metric")
        result = run_bae("eval", EXAMPLE, "--compiled", str(naive_version), "--dataset", str(dev), "--lm",
                         f"{LMS}:fewshot", "--no-log", "--json", *gate, *flags)  # fmt: skip
        report = json.loads(result.stdout)
        assert report["metric"] == metric
        assert report["columns"][0]["score"] == pytest.approx(naive_score(metric), abs=1e-4)
        verdicts[metric] = result.returncode
    assert verdicts == {
        "default_metric": 0 if naive_score("default_metric") > between else 1,
        "priority_metric": 0 if naive_score("priority_metric") > between else 1,
    }

    # bae.evaluate takes the metric as a function or a reference
    for metric in (lms.priority_metric, f"{LMS}:priority_metric"):
        result = bae.evaluate(EXAMPLE, dev, lm=lms.fewshot(), metric=metric, compiled=naive_version)
        assert result.metric == "priority_metric"
        assert result.columns[0].score.score == pytest.approx(naive_score("priority_metric"))


def test_eval_warns_when_the_recorded_score_used_another_metric(data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, dev, root = data
    result = run_bae("eval", EXAMPLE, "--compiled", str(root), "--dataset", str(dev), "--lm",
                     f"{LMS}:fewshot", "--no-log", "--metric", f"{LMS}:priority_metric")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "v1 recorded its dev score with metric default_metric, this evaluation judges with priority_metric" in (
        result.stderr.replace("\n", " ")
    )


@pytest.mark.parametrize(
    ("metric", "says"),
    [
        ("raising_metric", "metric 'raising_metric' (judging BillingIssue) raised KeyError"),
        ("wordy_metric", "metric 'wordy_metric' (judging BillingIssue) returned 'looks right': a metric must return"),
    ],
)
@pytest.mark.parametrize("command", ["compile", "eval"])
def test_a_broken_metric_is_one_clear_line_before_any_lm_call(
    data: tuple[Path, Path, Path], tmp_path: Path, command: str, metric: str, says: str
) -> None:
    train, dev, root = data
    where = ("--trainset", str(train), "--out", str(tmp_path / "c")) if command == "compile" else ("--no-log",)
    where += () if command == "compile" else ("--compiled", str(root))
    # the LM is down: reaching it would be exit 4
    result = run_bae(command, EXAMPLE, *where, "--devset" if command == "compile" else "--dataset", str(dev),
                     "--lm", f"{LMS}:down", "--metric", f"{LMS}:{metric}")  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"bae: error: {says}")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("v*"))


@pytest.mark.parametrize(
    ("answer", "says"), [(None, "returned None"), (1.5, "returned 1.5"), (float("nan"), "returned nan")]
)
def test_a_metric_that_fails_mid_evaluation_stops_it(data: tuple[Path, Path, Path], answer: Any, says: str) -> None:
    """Right on gold against itself (the up-front check passes), wrong on the first miss."""
    _, dev, root = data

    def picky(example: Any, prediction: Any, trace: Any = None) -> Any:
        return 1.0 if prediction.priority == example.priority else answer

    with pytest.raises(BaeInputError, match=f"metric 'test_a_metric_that_fails_mid_evaluation_stops_it.<locals>.picky' "
                       f"\\(judging BillingIssue\\) {says}"):  # fmt: skip
        bae.evaluate(EXAMPLE, dev, lm=lms.fewshot(), metric=picky, threads=1, naive=True, compiled=root)
