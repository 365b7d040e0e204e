"""Recording runs for review: each LM-made step says what made it and how sure it was, in every place a run is
written (``--record`` lines of ``bae run`` and ``bae serve``, ``bae run --json``, ``POST /run``, ``bae eval
--output``, the run log), and concurrent writers lose and interleave nothing."""

from __future__ import annotations

import json
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bae.dataset import load_dataset, parse_trace
from bae.dspy_backend import DSPyBackend
from bae.loader import load_graph
from bae.recording import Recorder, RecordError, record_line
from bae.result import CallRecord
from bae.runlog import SCHEMA_VERSION, RunLog
from bae_cli.app import run as bae_run
from tests import lms, review_lms
from tests.cli import EXAMPLE, ROOT, environment

COMPILED = ROOT / "compiled"
CONFIDENT = f"{ROOT / 'tests' / 'review_lms.py'}:confident"
TICKETS = [trace[0]["fields"] for trace in lms.TRACES]


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_calls(ticket: dict[str, Any], version: str = "v1") -> list[dict[str, Any]]:
    """The ``lm`` entries ``confident`` makes for a ticket of the example: the choice and the make, both sure
    as the ticket says."""
    sure = round(0.05 + (sum(map(ord, ticket["text"])) % 90) / 100, 2)
    gold = next(t for t in lms.TRACES if t[0]["fields"] == ticket)[-1]["node"]
    return [
        {"predictor": "Triage.choice", "version": version, "source": "optimized", "confidence": sure},
        {"predictor": f"{gold}.make", "version": version, "source": "optimized", "confidence": sure},
    ]


def test_a_record_line_marks_each_lm_made_step_and_loads_as_training_data(tmp_path: Path) -> None:
    loaded = load_graph(EXAMPLE)
    ticket = TICKETS[0]
    result = loaded.graph.run(loaded.graph.start(**ticket), lm=DSPyBackend(review_lms.confident()), **loaded.deps)
    line = record_line(result, None)
    assert [("lm" in step) for step in line["trace"]] == [False, False, True]
    naive = [{**call, "version": "naive", "source": "naive"} for call in expected_calls(ticket)]
    assert line["trace"][2]["lm"] == naive
    assert parse_trace(loaded.graph, line) == tuple(result.trace)  # the loader reads the steps, ignores the rest
    path = tmp_path / "recorded.jsonl"
    Recorder(path).append([line, line])
    assert len(load_dataset(path, loaded.graph).traces) == 2


def test_bae_run_records_and_prints_each_steps_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--record`` (one input, then a batch in input order) and ``--json`` show the same steps."""
    record = tmp_path / "recorded.jsonl"
    single = ["run", "--compiled", str(COMPILED), "--lm", CONFIDENT, "--no-log", "--record", str(record)]
    assert bae_run([*single, "--input", json.dumps(TICKETS[0]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(t) + "\n" for t in TICKETS[1:6]))
    assert bae_run([*single, "--batch", str(batch), "--concurrency", "4", "--output", str(tmp_path / "out.jsonl")]) == 0
    recorded = lines_of(record)
    assert [line["trace"][0]["fields"] for line in recorded] == TICKETS[:6]
    assert printed["trace"] == recorded[0]["trace"]
    for ticket, line in zip(TICKETS[:6], recorded, strict=True):
        assert line["trace"][-1]["lm"] == expected_calls(ticket)
    results = lines_of(tmp_path / "out.jsonl")  # a batch's results show the steps the same way
    assert [r["trace"] for r in results] == [line["trace"] for line in recorded[1:]]


def test_a_record_file_that_cannot_be_written_is_refused_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="is a directory"):
        Recorder(tmp_path).check()
    with pytest.raises(RecordError, match="folder that does not exist"):
        Recorder(tmp_path / "no" / "such.jsonl").check()
    code = bae_run(["run", "--compiled", str(COMPILED), "--lm", f"{ROOT / 'tests' / 'review_lms.py'}:down",
                    "--no-log", "--record", str(tmp_path), "--input", json.dumps(TICKETS[0])])  # fmt: skip
    assert code == 2  # the LM (down) was never asked: refused before


def _append_many(path: str, worker: int, barrier: Any, count: int) -> None:
    barrier.wait()
    recorder = Recorder(path)
    for i in range(count):
        recorder.append([{"worker": worker, "i": i, "pad": str(worker) * 70_000}])


def test_concurrent_writers_lose_and_interleave_no_line(tmp_path: Path) -> None:
    """Threads of one recorder and processes of their own, each line 70 KB (beyond any pipe or page size)."""
    path = tmp_path / "recorded.jsonl"
    recorder = Recorder(path)

    def write(worker: int) -> None:
        for i in range(20):
            recorder.append([{"worker": worker, "i": i, "pad": "x" * 70_000}])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=_append_many, args=(str(path), 100 + w, barrier, 15)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    lines = lines_of(path)  # every line parses: none torn, none interleaved
    assert sorted((line["worker"], line["i"]) for line in lines) == sorted(
        [(w, i) for w in range(8) for i in range(20)] + [(100 + w, i) for w in range(4) for i in range(15)]
    )


def test_eval_output_lines_show_each_steps_calls(tmp_path: Path) -> None:
    dataset = tmp_path / "gold.jsonl"
    dataset.write_text("".join(json.dumps({"trace": t}) + "\n" for t in lms.TRACES[:3]))
    output = tmp_path / "runs.jsonl"
    code = bae_run(["eval", EXAMPLE, "--compiled", str(COMPILED), "--naive", "--dataset", str(dataset), "--lm",
                    CONFIDENT, "--no-log", "--output", str(output), "--json"])  # fmt: skip
    assert code == 0
    lines = lines_of(output)
    assert [line["version"] for line in lines] == ["v1", "naive"] * 3
    for line in lines:
        calls = line["trace"][-1]["lm"]
        assert [c["version"] for c in calls] == [line["version"]] * 2
        assert [c["source"] for c in calls] == ["optimized" if line["version"] == "v1" else "naive"] * 2
        assert all(c["confidence"] is not None for c in calls)


# -- the run log -------------------------------------------------------------------------------------
def test_the_run_log_keeps_each_calls_confidence(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.db")
    calls = [CallRecord("Triage", "choice", "optimized", 0.5, confidence=0.25), CallRecord("B", "make", "naive", 0.1)]
    log.log_run(started_at=datetime.now(UTC), duration_s=1.0, status="ok", error=None, graph="g.py",
                start_node="Ticket", version="v1", compiled_dir=None, lm="m", calls=calls)  # fmt: skip
    (logged,) = log.runs()
    assert [c.confidence for c in logged.calls] == [0.25, None]


SCHEMA_3 = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, duration_s REAL NOT NULL, status TEXT NOT NULL,
    error TEXT, graph TEXT NOT NULL, start_node TEXT NOT NULL, version TEXT, compiled_dir TEXT, lm TEXT,
    purpose TEXT NOT NULL DEFAULT 'run');
CREATE TABLE calls (run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    node TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, latency_s REAL NOT NULL, attempts INTEGER NOT NULL,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, error TEXT, cut TEXT, PRIMARY KEY (run_id, seq));
INSERT INTO runs VALUES (1, '2025-03-01T12:00:00.000000+00:00', 1.5, 'ok', NULL, 'g.py', 'Q', 'v1', 'c/v1', 'm', 'run');
INSERT INTO calls VALUES (1, 0, 'Answer', 'make', 'optimized', 0.5, 1, 10, 2, NULL, NULL, 'length');
PRAGMA user_version = 3;
"""


def test_a_schema_3_log_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_3)
    log = RunLog(path)
    (old,) = log.runs()
    assert [(c.cut, c.confidence) for c in old.calls] == [("length", None)]
    log.log_run(started_at=datetime.now(UTC), duration_s=1.0, status="ok", error=None, graph="g.py",
                start_node="Q", version="v1", compiled_dir=None, lm="m",
                calls=[CallRecord("Answer", "make", "optimized", 0.1, confidence=0.5)])  # fmt: skip
    assert [c.confidence for r in log.runs() for c in r.calls] == [0.5, None]  # newest first
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


# -- bae serve --record -------------------------------------------------------------------------------
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture
def recording_server(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    from bench.serve import wait_until_up

    record, out = tmp_path / "served.jsonl", tmp_path / "server.log"
    lm = f"{ROOT / 'tests' / 'review_lms.py'}:busy"
    command = [sys.executable, "-m", "bae_cli", "serve", "--compiled", str(COMPILED), "--port", "0", "--no-log",
               "--lm", lm, "--max-concurrency", "8", "--record", str(record)]  # fmt: skip
    with open(out, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment(), cwd=tmp_path)
    try:
        yield wait_until_up(process, out), record, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_concurrent_served_runs_are_recorded_whole(recording_server: tuple[str, Path, Any]) -> None:
    """N concurrent requests, N whole lines: each the run that request got back, its steps' calls included."""
    url, record, _ = recording_server
    tickets = TICKETS[:24]
    answers: dict[int, Any] = {}

    def post(index: int) -> None:
        answers[index] = httpx.post(url + "/run", json=tickets[index], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(tickets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer.status_code == 200 for answer in answers.values()), [a.text for a in answers.values()]
    recorded = lines_of(record)  # each line written before its response: all here now
    assert len(recorded) == len(tickets)
    by_input = {json.dumps(line["trace"][0]["fields"], sort_keys=True): line for line in recorded}
    for index, ticket in enumerate(tickets):
        line = by_input[json.dumps(ticket, sort_keys=True)]
        assert line["trace"] == answers[index].json()["trace"]  # what the client got is what was recorded
        assert line["trace"][-1]["lm"] == expected_calls(ticket)


def test_serve_refuses_a_record_file_it_cannot_write_before_listening(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bae_cli", "serve", "--compiled", str(COMPILED), "--port", "0", "--no-log",
               "--lm", CONFIDENT, "--record", str(tmp_path / "missing" / "f.jsonl")]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"bae: error: --record {tmp_path / 'missing' / 'f.jsonl'} is in a folder that does not exist: create it, "
        "or give another path"
    ]
