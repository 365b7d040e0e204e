"""The run log against real SQLite files: what goes in comes out, stats are exact, writers never collide."""

from __future__ import annotations

import json
import multiprocessing
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bae.exceptions import BaeInputError
from bae.result import CallRecord
from bae.runlog import (
    EVAL,
    NAIVE,
    SCHEMA_VERSION,
    RunLog,
    RunLogError,
    default_log_path,
    parse_since,
    percentile,
)
from tests.cli import bae
from tests.runs import in_threads

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def log(runlog: RunLog, **overrides: Any) -> int:
    """A run with sensible defaults, so each test states only what it is about."""
    fields: dict[str, Any] = {
        "started_at": T0,
        "duration_s": 1.0,
        "status": "ok",
        "error": None,
        "graph": "examples/qa.py:graph",
        "start_node": "Question",
        "version": "v1",
        "compiled_dir": "compiled/qa",
        "lm": "openai/gpt-4o-mini",
        "calls": [],
    }
    return runlog.log_run(**(fields | overrides))


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_new_log_is_wal_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "runs.db"
    RunLog(path)
    RunLog(path)  # reopening is idempotent
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"runs", "calls"}


def test_round_trip_of_runs_and_calls(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    calls = [
        CallRecord("Question", "make", "optimized", 0.5, 1, 120, 30, 0.0012, None),
        CallRecord("Answer", "choice", "stale", 1.25, 3, None, None, None, "ParseError: no JSON", cut="length"),
    ]
    first = log(runlog, calls=calls)
    second = log(
        runlog,
        started_at=T0 + timedelta(hours=1),
        duration_s=2.5,
        status="error",
        error="BaeLMError: gave up",
        version=None,
        compiled_dir=None,
        calls=[],
    )
    assert second > first

    newest, oldest = runlog.runs()
    assert newest.id == second and oldest.id == first
    assert oldest.started_at == T0 and oldest.started_at.tzinfo is not None
    assert (oldest.duration_s, oldest.status, oldest.error) == (1.0, "ok", None)
    assert (oldest.graph, oldest.start_node) == ("examples/qa.py:graph", "Question")
    assert (oldest.version, oldest.compiled_dir, oldest.lm) == ("v1", "compiled/qa", "openai/gpt-4o-mini")
    assert oldest.calls == tuple(calls)
    assert (newest.status, newest.error, newest.version, newest.compiled_dir) == (
        "error",
        "BaeLMError: gave up",
        None,
        None,
    )
    assert newest.calls == ()
    assert [r.id for r in runlog.runs(limit=1)] == [second]
    assert json.loads(json.dumps(oldest.as_dict()))["calls"][1]["error"] == "ParseError: no JSON"
    assert count(runlog.path, "calls") == 2


def test_naive_started_at_is_local_time_and_stored_as_utc(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    local = datetime(2025, 3, 1, 9, 30)
    log(runlog, started_at=local)
    (run,) = runlog.runs()
    assert run.started_at == local.astimezone(UTC)
    assert run.started_at.utcoffset() == timedelta(0)


def test_stats_on_known_data(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    # v1, Answer/make: 20 calls with latencies 1..20 s, 15 optimized, 4 stale, 1 naive;
    # prompt tokens reported on 10 of them, no cost anywhere, 2 errors.
    answer = [
        CallRecord(
            "Answer",
            "make",
            "optimized" if i <= 15 else "stale" if i <= 19 else "naive",
            float(i),
            prompt_tokens=10 * i if i % 2 == 0 else None,
            completion_tokens=None,
            error="boom" if i in (3, 7) else None,
        )
        for i in range(1, 21)
    ]
    route = [
        CallRecord("Route", "choice", "optimized", 0.2, cost=0.5),
        CallRecord("Route", "choice", "naive", 0.4),
    ]
    log(runlog, duration_s=1.0, calls=answer[:10] + route)
    log(runlog, duration_s=2.0, calls=answer[10:])
    log(runlog, duration_s=6.0, status="error", error="BaeParseError: x")
    naive_route = [
        CallRecord("Route", "choice", "naive", 0.3, prompt_tokens=7, completion_tokens=2, cost=0.25),
        CallRecord("Route", "choice", "naive", 0.1, prompt_tokens=5, completion_tokens=4, cost=0.5),
    ]
    log(runlog, version=None, compiled_dir=None, duration_s=4.0, status="interrupted", calls=naive_route)
    log(runlog, version="v10", calls=[])

    stats = runlog.stats()
    assert [v.as_dict() for v in stats.versions] == [
        {"version": None, "runs": 1, "ok": 0, "errors": 0, "interrupted": 1, "mean_duration_s": 4.0},
        {"version": "v1", "runs": 3, "ok": 2, "errors": 1, "interrupted": 0, "mean_duration_s": 3.0},
        {"version": "v10", "runs": 1, "ok": 1, "errors": 0, "interrupted": 0, "mean_duration_s": 1.0},
    ]
    assert [(n.version, n.node, n.kind) for n in stats.nodes] == [
        (None, "Route", "choice"),
        ("v1", "Answer", "make"),
        ("v1", "Route", "choice"),
    ]
    naive, ans, rte = stats.nodes
    assert ans.as_dict() == {
        "version": "v1",
        "node": "Answer",
        "kind": "make",
        "calls": 20,
        "optimized_share": 0.75,
        "naive_share": 0.05,
        "stale_share": 0.2,
        "p50_latency_s": 10.0,  # nearest rank: 10th of 20, not the interpolated 10.5
        "p95_latency_s": 19.0,  # 19th of 20, not 19.05
        "prompt_tokens": 1100,  # 10 * (2 + 4 + ... + 20)
        "completion_tokens": None,
        "cost": None,
        "error_rate": 0.1,
    }
    assert (rte.calls, rte.optimized_share, rte.naive_share, rte.cost) == (2, 0.5, 0.5, 0.5)
    assert (rte.p50_latency_s, rte.p95_latency_s) == (0.2, 0.4)
    assert (naive.prompt_tokens, naive.completion_tokens, naive.cost) == (12, 6, 0.75)
    assert (naive.naive_share, naive.error_rate, naive.p50_latency_s) == (1.0, 0.0, 0.1)
    assert json.loads(json.dumps(stats.as_dict()))["nodes"][1]["p95_latency_s"] == 19.0


def test_stats_filters_by_version_and_since(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    for day, version in enumerate(["v1", "v2", "v2", None]):
        call = CallRecord("Answer", "make", "naive" if version is None else "optimized", float(day + 1))
        log(runlog, started_at=T0 + timedelta(days=day), version=version, duration_s=day + 1.0, calls=[call])

    only_v2 = runlog.stats(version="v2")
    assert [(v.version, v.runs, v.mean_duration_s) for v in only_v2.versions] == [("v2", 2, 2.5)]
    assert [(n.version, n.calls, n.p50_latency_s) for n in only_v2.nodes] == [("v2", 2, 2.0)]

    only_naive = runlog.stats(version=NAIVE)
    assert [(v.version, v.runs) for v in only_naive.versions] == [(None, 1)]
    assert [(n.version, n.naive_share) for n in only_naive.nodes] == [(None, 1.0)]

    since_day2 = runlog.stats(since=T0 + timedelta(days=2))  # inclusive bound
    assert [(v.version, v.runs) for v in since_day2.versions] == [(None, 1), ("v2", 1)]
    assert runlog.stats(version="v1", since=T0 + timedelta(days=1)).versions == ()
    assert runlog.stats(version="v9").nodes == ()
    assert [r.started_at for r in runlog.runs(since=T0 + timedelta(days=3))] == [T0 + timedelta(days=3)]

    # An equivalent instant in another offset selects the same runs.
    plus_two = (T0 + timedelta(days=2)).astimezone(timezone(timedelta(hours=2)))
    assert runlog.stats(since=plus_two) == since_day2


def test_eval_runs_are_told_apart_and_left_out_of_stats_by_default(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    log(runlog, calls=[CallRecord("Answer", "make", "optimized", 1.0)])
    log(runlog, purpose=EVAL, duration_s=3.0, calls=[CallRecord("Answer", "make", "optimized", 2.0)] * 2)
    log(runlog, purpose=EVAL, version="v2", calls=[])
    assert [(v.version, v.runs) for v in runlog.stats().versions] == [("v1", 1)]  # production only
    assert [n.calls for n in runlog.stats().nodes] == [1]
    evals = runlog.stats(purpose=EVAL)
    assert [(v.version, v.runs, v.mean_duration_s) for v in evals.versions] == [("v1", 1, 3.0), ("v2", 1, 1.0)]
    assert [(n.version, n.calls) for n in evals.nodes] == [("v1", 2)]
    assert [v.runs for v in runlog.stats(purpose=None).versions] == [2, 1]
    assert sorted(r.purpose for r in runlog.runs()) == ["eval", "eval", "run"]
    assert [r.purpose for r in runlog.runs(purpose="run")] == ["run"]
    with pytest.raises(ValueError, match="purpose"):
        log(runlog, purpose="test")


SCHEMA_1 = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, duration_s REAL NOT NULL, status TEXT NOT NULL,
    error TEXT, graph TEXT NOT NULL, start_node TEXT NOT NULL, version TEXT, compiled_dir TEXT, lm TEXT);
CREATE TABLE calls (run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    node TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, latency_s REAL NOT NULL, attempts INTEGER NOT NULL,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, error TEXT, PRIMARY KEY (run_id, seq));
INSERT INTO runs VALUES (1, '2025-03-01T12:00:00.000000+00:00', 1.5, 'ok', NULL, 'g.py', 'Q', 'v1', 'c/v1', 'm');
INSERT INTO calls VALUES (1, 0, 'Answer', 'make', 'optimized', 0.5, 1, 10, 2, NULL, NULL);
PRAGMA user_version = 1;
"""


@pytest.mark.parametrize("create", [True, False], ids=["writer", "reader"])
def test_a_schema_1_log_keeps_working(tmp_path: Path, create: bool) -> None:
    """A log written before runs had a purpose: its runs read back as production runs, and new runs append."""
    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1)
    runlog = RunLog(path, create=create)
    (old,) = runlog.runs()
    assert (old.id, old.purpose, old.version, old.duration_s) == (1, "run", "v1", 1.5)
    assert old.calls == (CallRecord("Answer", "make", "optimized", 0.5, 1, 10, 2, None, None, cut=None),)
    assert [(v.version, v.runs) for v in runlog.stats().versions] == [("v1", 1)]
    log(RunLog(path), purpose=EVAL)
    assert [(r.id, r.purpose) for r in runlog.runs()] == [(2, "eval"), (1, "run")]  # newest first
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert "cut" in {row[1] for row in conn.execute("PRAGMA table_info(calls)")}


def _write_runs(path: str, worker: int, barrier: Any, runs: int) -> None:
    """One process of the concurrency test: open at the same instant as the others, then append."""
    barrier.wait()
    runlog = RunLog(path)
    for i in range(runs):
        calls = [CallRecord(f"N{worker}", "make", "naive", 0.01 * j, prompt_tokens=i) for j in range(3)]
        log(runlog, graph=f"worker{worker}", start_node=str(i), calls=calls)


def test_many_processes_append_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"  # not created yet: the processes also race on creating it
    ctx = multiprocessing.get_context("spawn")
    workers, runs = 8, 50
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_write_runs, args=(str(path), w, barrier, runs)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers

    assert count(path, "runs") == workers * runs
    assert count(path, "calls") == workers * runs * 3
    logged = RunLog(path).runs()
    per_worker: dict[str, list[int]] = {}
    for run in logged:
        per_worker.setdefault(run.graph, []).append(int(run.start_node))
    expected = {f"worker{w}": list(range(runs)) for w in range(workers)}
    assert {graph: sorted(starts) for graph, starts in per_worker.items()} == expected
    assert all(len(r.calls) == 3 and r.calls[0].node == r.graph.replace("worker", "N") for r in logged)


def test_many_threads_share_one_log(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")

    def write(worker: int) -> list[int]:
        return [log(runlog, graph=f"t{worker}", calls=[CallRecord("A", "make", "naive", float(i))]) for i in range(25)]

    ids = [run_id for written in in_threads(write, 8) for run_id in written]
    assert len(set(ids)) == 200
    assert count(runlog.path, "runs") == 200 and count(runlog.path, "calls") == 200


def test_reading_while_a_writer_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bae stats`` must not queue behind a long run's write, nor need write access to an existing log."""
    import bae.runlog

    path = tmp_path / "runs.db"
    log(RunLog(path), calls=[CallRecord("A", "make", "naive", 0.5)])
    monkeypatch.setattr(bae.runlog, "BUSY_TIMEOUT_S", 0.5)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM calls")  # any write: the lock is what matters
        reader = RunLog(path, create=False)
        assert [(v.runs, v.mean_duration_s) for v in reader.stats().versions] == [(1, 1.0)]
        with pytest.raises(RunLogError, match=r"cannot write to run log .*locked"):
            log(reader)
    finally:
        writer.rollback()
        writer.close()
    assert count(path, "runs") == 1


def test_corrupt_file_is_a_one_line_bae_input_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(random.Random(7).randbytes(8192))
    with pytest.raises(BaeInputError) as caught:
        RunLog(path)
    assert isinstance(caught.value, RunLogError) and caught.value.exit_code == 2
    assert str(path) in caught.value.message and "not a database" in caught.value.message
    assert "\n" not in caught.value.message


def test_foreign_or_newer_databases_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(RunLogError, match="not a bae run log"):
        RunLog(foreign)

    newer = tmp_path / "newer.db"
    RunLog(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RunLogError, match="newer than this bae reads"):
        RunLog(newer)


def test_unreadable_paths_are_bae_errors(tmp_path: Path) -> None:
    with pytest.raises(RunLogError, match="no run log at"):
        RunLog(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(RunLogError, match="cannot open run log"):
        RunLog(tmp_path / "adir.db")


def test_secrets_and_endpoints_are_never_stored(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    leaky = (
        "AuthenticationError: Incorrect API key provided: sk-proj-abcdefghijklmnop1234 "
        "at https://user:pw@api.example.com/v1/chat; headers Authorization: Bearer abc.def; api_key=hunter2"
    )
    log(runlog, error=leaky, calls=[CallRecord("A", "make", "naive", 0.1, error=leaky + " max_tokens: 100")])
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("runs.db*"))  # with any -wal not yet checkpointed
    for secret in (b"sk-proj", b"api.example.com", b"pw@", b"abc.def", b"hunter2"):
        assert secret not in raw
    (run,) = runlog.runs()
    assert run.error is not None and run.error.startswith("AuthenticationError: Incorrect API key provided: [r")
    assert run.calls[0].error is not None and run.calls[0].error.endswith("max_tokens: 100")


def test_bad_status_or_call_is_a_programming_error(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "runs.db")
    with pytest.raises(ValueError, match="status"):
        log(runlog, status="done")
    with pytest.raises(ValueError, match="source='cached'"):
        log(runlog, calls=[CallRecord("A", "make", "cached", 0.1)])
    assert count(runlog.path, "runs") == 0


def test_default_log_path_is_the_projects_own_and_the_cli_reads_bae_log_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's default is ``.bae/runs.db`` under the current directory; ``$BAE_LOG_DB`` is read at the
    edge, by the CLI's ``--log-db`` option, never by the library."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BAE_LOG_DB", str(tmp_path / "elsewhere.db"))
    assert default_log_path() == tmp_path / ".bae" / "runs.db"
    result = bae("stats", "--json", cwd=tmp_path, env={"BAE_LOG_DB": str(tmp_path / "elsewhere.db")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["log"] == str(tmp_path / "elsewhere.db")


NOW = datetime(2025, 3, 10, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        (" 1d ", NOW - timedelta(days=1)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2W", NOW - timedelta(weeks=2)),
        ("0d", NOW),
        ("2024-05-01T12:00:00+00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1).astimezone(UTC)),
        ("2024-05-01T09:15", datetime(2024, 5, 1, 9, 15).astimezone(UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    parsed = parse_since(text, now=NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


BAD_SINCE = ["", "  ", "yesterday", "5y", "-1d", "1.5h", "d", "2024-13-01", "99999999999w"]


@pytest.mark.parametrize("text", BAD_SINCE)
def test_parse_since_rejects_bad_input_in_one_line(text: str) -> None:
    with pytest.raises(BaeInputError) as caught:
        parse_since(text, now=NOW)
    assert "\n" not in caught.value.message and repr(text) in caught.value.message
    assert "30m" in caught.value.message


def test_parse_since_relative_defaults_to_now() -> None:
    before = datetime.now(UTC)
    parsed = parse_since("1h")
    assert before - timedelta(hours=1) <= parsed <= datetime.now(UTC) - timedelta(hours=1)


# Off-by-one ranks only show when p * n is a multiple of 100, so draw such p often.
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
    st.one_of(st.sampled_from([5, 10, 20, 25, 50, 75, 95]), st.integers(1, 100)),
)
def test_percentile_is_nearest_rank(values: list[float], p: int) -> None:
    result = percentile(values, p)
    assert result in values
    # Nearest rank: the smallest observed value with at least p% of the data at or below it.
    assert sum(v <= result for v in values) * 100 >= p * len(values)
    assert sum(v < result for v in values) * 100 < p * len(values)


def test_percentile_edges() -> None:
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([3.0, 1.0, 2.0], 1) == 1.0
    assert percentile([2.0, 1.0], 50) == 1.0  # rank exactly 1: the lower value, not the mean or the upper
    assert percentile([4.0, 3.0, 2.0, 1.0], 75) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_import_stays_light() -> None:
    code = "import sys, bae.runlog; print(','.join(m for m in ('dspy', 'litellm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
