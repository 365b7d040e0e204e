"""The rules of ``bae run --batch``: where results go, what is recorded in which order, how a failure reads.

A batch's results are data: one JSON line per input on stdout, in input order (or in ``--output``),
so stdout can be piped; the failures, the usage table and the counts are the report, on stderr.
``--record`` keeps input order too, whatever order the runs finish in. Refusing a single input next
to ``--batch`` is in ``test_bad_input``'s table.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import EXAMPLE, LMS, bae
from tests.lms import TRACES

TICKETS = [trace[0]["fields"] for trace in TRACES[:4]]


def test_without_output_the_results_are_json_lines_on_stdout_and_record_keeps_input_order(tmp_path: Path) -> None:
    batch, record = tmp_path / "in.jsonl", tmp_path / "rec.jsonl"
    batch.write_text("".join(json.dumps(ticket) + "\n" for ticket in TICKETS))
    # the first input's run ends last: its routing waits until the three others were answered
    result = bae("run", EXAMPLE, "--lm", f"{LMS}:first_last", "--batch", str(batch), "--concurrency", "4",
                 "--no-log", "--record", str(record))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # nothing else on stdout
    assert [(row["line"], row["ok"]) for row in rows] == [(1, True), (2, True), (3, True), (4, True)]
    assert [row["trace"][0]["fields"] for row in rows] == TICKETS
    assert [row["node"] for row in rows] == [trace[-1]["node"] for trace in TRACES[:4]]
    assert "LM usage over the batch" in result.stderr and "4 ok, 0 failed" in result.stderr
    recorded = [json.loads(line)["trace"] for line in record.read_text().splitlines()]
    assert [trace[0]["fields"] for trace in recorded] == TICKETS  # input order, not completion order


def test_with_output_stdout_stays_empty_and_the_report_says_where_the_results_went(tmp_path: Path) -> None:
    batch, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_text("".join(json.dumps(ticket) + "\n" for ticket in TICKETS[:2]))
    result = bae("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--batch", str(batch), "--no-log", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"2 ok, 0 failed; results in {output}" in result.stderr
    assert [json.loads(line)["line"] for line in output.read_text().splitlines()] == [1, 2]


def test_a_failed_input_is_named_once_as_file_and_line(tmp_path: Path) -> None:
    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps(TICKETS[0]) + "\n{oops\n")  # a billing ticket, then a line that is not JSON
    result = bae("run", EXAMPLE, "--lm", f"{LMS}:garbled_billing", "--batch", str(batch), "--no-log")
    assert result.returncode == 1, result.stderr
    failures = [line for line in result.stderr.splitlines() if str(batch) in line]
    assert failures == [
        f"{batch}:1: BillingIssue (make): the LM's answer did not parse after 3 attempts: "
        + failures[0].split("attempts: ", 1)[1],
        f"{batch}:2: invalid JSON (Expecting property name enclosed in double quotes at line 1 column 2): "
        'give Ticket\'s fields as a JSON object, e.g. {"customer_email": ..., "text": ...}',
    ], result.stderr
    assert [json.loads(line)["ok"] for line in result.stdout.splitlines()] == [False, False]


def test_help_says_where_a_batchs_results_go() -> None:
    result = bae("run", "--help", env={"COLUMNS": "400"})
    assert "The results go to stdout, one JSON line each in input order (or to --output)" in result.stdout
