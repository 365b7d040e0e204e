"""What a newcomer reads: messages that say what happened in the user's terms, and what to do.

Each test runs the real CLI in a subprocess on the example graph and checks the line the user sees;
refusals (one ``bae: error:`` line, nothing written) are in ``test_bad_input``'s table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import EXAMPLE, LMS, ROOT, bae
from tests.test_local_lm import needs_model
from tests.workspace import assert_refused

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


def test_a_missing_api_key_says_what_to_set_and_no_hint_is_redacted() -> None:
    """DSPy's own remedy (``pass api_key="..." to dspy.LM(...)``) looks like a key to the redaction of error
    lines; bae words this one itself. The key check is local: no request leaves the machine."""
    ticket = json.dumps({"customer_email": "ana@northwind.io", "text": "I was charged twice."})
    result = bae("run", EXAMPLE, "--compiled", str(COMPILED), "--lm", "openai/gpt-4o-mini", "--no-log",
                 "--input", ticket, env={"OPENAI_API_KEY": "", "OPENAI_API_BASE": ""})  # fmt: skip
    assert_refused(
        result,
        4,
        "bae: error: Triage (choice): LM call failed: no API key for openai/gpt-4o-mini: set OPENAI_API_KEY in the "
        "environment (in Python, dspy.LM also takes the key as its api_key argument)",
    )
    assert "[redacted]" not in result.stderr


def test_a_failed_inspect_gate_is_also_the_error_line_on_stderr() -> None:
    score = json.loads((COMPILED / "v1" / "manifest.json").read_text())["scores"]["optimized"]
    verdict = f"gate failed: optimized dev score {score:.3f} is below --min-score 1.01"  # as every command shows it
    result = bae("inspect", str(COMPILED), "--min-score", "1.01")
    assert_refused(result, 1, f"bae: error: {verdict}")
    assert result.stdout.splitlines()[-1] == verdict  # the report, on stdout, is unchanged
    as_json = bae("inspect", str(COMPILED), "--min-score", "1.01", "--json")
    assert_refused(as_json, 1, f"bae: error: {verdict}")
    assert json.loads(as_json.stdout)["gate_failures"] == [verdict.removeprefix("gate failed: ")]


@pytest.fixture(scope="module")
def log_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run log holding one production run of the committed v1."""
    db = tmp_path_factory.mktemp("log") / "runs.db"
    ticket = json.dumps({"customer_email": "ana@northwind.io", "text": "I was charged twice."})
    run = bae("run", "--compiled", str(COMPILED), "--lm", ORACLE, "--log-db", str(db), "--input", ticket)
    assert run.returncode == 0, run.stderr
    return db


def test_stats_for_a_version_that_exists_nowhere_is_an_error_naming_what_the_log_has(log_db: Path) -> None:
    result = bae("stats", "--log-db", str(log_db), "--compiled", str(COMPILED), "--version", "v7")
    assert_refused(
        result,
        2,
        f"bae: error: --version v7: no such version in the run log or in {COMPILED}: the log has production runs of v1",
    )


def test_stats_that_select_nothing_say_so_instead_of_printing_empty_tables(log_db: Path, tmp_path: Path) -> None:
    naive = bae("stats", "--log-db", str(log_db), "--version", "naive", cwd=tmp_path)  # no ./compiled: normal
    assert naive.returncode == 0 and naive.stderr == "", naive.stderr
    assert naive.stdout.splitlines() == [f"no production runs of naive in {log_db}: it has production runs of v1"]
    evals = bae("stats", "--log-db", str(log_db), "--eval", cwd=tmp_path)
    assert evals.returncode == 0 and evals.stderr == "", evals.stderr
    assert evals.stdout.splitlines() == [f"no bae eval runs in {log_db}: it has no bae eval runs"]


MAYBE_GRAPH = '''
from bae import Graph, Node


class Question(Node):
    """A question that may need a follow-up."""

    text: str

    def __call__(self, lm) -> "FollowUp | None": ...


class FollowUp(Node):
    """A follow-up question."""

    text: str


graph = Graph(start=Question)
'''


def test_graph_says_may_end_only_of_a_node_that_may_also_go_on(tmp_path: Path) -> None:
    graph = tmp_path / "maybe.py"
    graph.write_text(MAYBE_GRAPH)
    example = bae("graph", EXAMPLE)
    assert example.returncode == 0, example.stderr
    assert "may end" not in example.stdout  # its queues are terminal: they always end
    assert "BillingIssue" in example.stdout
    maybe = bae("graph", str(graph))
    assert maybe.returncode == 0, maybe.stderr
    assert maybe.stdout.splitlines() == ["Question  (decides, may end)", "└── FollowUp"]


REPLY_GRAPH = '''
from typing import Annotated

from bae import Context, Graph, Node


class Ticket(Node):
    """A customer support ticket."""

    ticket: str

    def __call__(self, lm) -> "Reply": ...


class Reply(Node):
    """Answer a customer support ticket."""

    ticket: Annotated[str, Context("the customer's message")]
    reply: str


graph = Graph(start=Ticket)
'''


@needs_model
def test_an_embedded_answer_redone_under_length_caps_is_told_in_user_terms(tmp_path: Path) -> None:
    """Gemma 3 270M (greedy, seeded) repeats itself in this reply: the engine redoes the answer under length
    caps and says what that means for the answer, not how the grammar works."""
    graph = tmp_path / "reply.py"
    graph.write_text(REPLY_GRAPH)
    ticket = {"ticket": "My order arrived broken and I want my money back now!"}
    result = bae("run", str(graph), "--lm", "local", "--no-log", "--input", json.dumps(ticket))
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "embedded model" in line]
    assert said == [
        "the embedded model kept repeating itself in an answer, so it answered again with each text at most 256 "
        "characters and each list at most 8 items long: a text in this answer may end abruptly"
    ], result.stderr
    assert "JSON" not in result.stderr and "capped" not in result.stderr
