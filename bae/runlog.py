"""The run log: one SQLite file every ``bae run`` appends to and ``bae stats`` reads.

Kept to the stdlib so ``bae stats`` starts fast. Each write opens its own short-lived
connection, so any number of threads and processes can append at once: WAL lets
readers and the single writer overlap, and ``busy_timeout`` makes writers queue
instead of failing. Only the fields below are stored; never keys or endpoints, and
error text is scrubbed of anything that looks like either.

Each run has a ``purpose``: ``run`` (production: ``bae run``, ``bae serve``) or ``eval``
(``bae eval`` scoring a version on a dataset), so figures about production leave the
evaluations out. Schema 2 added that column; a schema-1 log is migrated in place when it is
opened (its runs are production runs), and a log a newer bae wrote is refused. Schema 3 added
``calls.cut``: ``length`` or ``timeout`` for a call cut short by ``max_tokens`` or the LM timeout.
Schema 4 added ``calls.confidence``: the model's probability of the call's closed answer, where the
LM reported one (``bae.confidence``); calls logged before have none.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bae.exceptions import BaeError, BaeInputError
from bae.observe import Observer
from bae.redaction import redact
from bae.result import CallRecord
from bae.usage import UsageRow, usage_rows

if TYPE_CHECKING:
    from bae.result import GraphResult
    from bae.run import Run

logger = logging.getLogger("bae")

SCHEMA_VERSION = 4
NAIVE = "naive"  # the ``version`` filter value that selects runs without a compiled version
RUN_STATUSES = frozenset({"ok", "error", "interrupted"})
PRODUCTION = "run"  # a run's purpose: production (bae run, bae serve)
EVAL = "eval"  # a run's purpose: bae eval scoring a version on a dataset
PURPOSES = frozenset({PRODUCTION, EVAL})
CALL_KINDS = frozenset({"make", "choice"})
CALL_SOURCES = frozenset({"optimized", "naive", "stale"})
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    duration_s REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    graph TEXT NOT NULL,
    start_node TEXT NOT NULL,
    version TEXT,
    compiled_dir TEXT,
    lm TEXT,
    purpose TEXT NOT NULL DEFAULT 'run'
);
CREATE INDEX IF NOT EXISTS runs_started_at ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_version ON runs (version);
CREATE TABLE IF NOT EXISTS calls (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    latency_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost REAL,
    error TEXT,
    cut TEXT,
    confidence REAL,
    PRIMARY KEY (run_id, seq)
);
"""
_MIGRATIONS = {  # from schema N to N + 1; every run logged before schema 2 was a production run
    1: ["ALTER TABLE runs ADD COLUMN purpose TEXT NOT NULL DEFAULT 'run'"],
    2: ["ALTER TABLE calls ADD COLUMN cut TEXT"],  # a call cut by max_tokens or the LM timeout
    3: ["ALTER TABLE calls ADD COLUMN confidence REAL"],  # how sure the LM was of a closed answer
}


class RunLogError(BaeInputError):
    """The run log file cannot be opened, read or written (corrupt, not ours, no permission)."""


@dataclass(frozen=True)
class LoggedRun:
    """One run as read back from the log, with its calls in the order they were made."""

    id: int
    started_at: datetime
    duration_s: float
    status: str
    error: str | None
    graph: str
    start_node: str
    version: str | None
    compiled_dir: str | None
    lm: str | None
    calls: tuple[CallRecord, ...]
    purpose: str = PRODUCTION

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": self.started_at.isoformat()}


@dataclass(frozen=True)
class NodeStats:
    """How one predictor (version, node, kind) behaved across the selected runs.

    Shares and ``error_rate`` are fractions of ``calls``. Token and cost totals sum the
    calls that reported them and are ``None`` when none did, so "unknown" never reads as 0.
    """

    version: str | None
    node: str
    kind: str
    calls: int
    optimized_share: float
    naive_share: float
    stale_share: float
    p50_latency_s: float
    p95_latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    error_rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionSummary:
    """Run-level outcome of one compiled version (``None``: naive runs)."""

    version: str | None
    runs: int
    ok: int
    errors: int
    interrupted: int
    mean_duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stats:
    """Everything ``bae stats`` prints: per-version run summaries and per-predictor numbers."""

    versions: tuple[VersionSummary, ...]
    nodes: tuple[NodeStats, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_log_path() -> Path:
    """``.bae/runs.db`` under the current directory (the CLI's ``--log-db`` / ``$BAE_LOG_DB`` say otherwise)."""
    return Path.cwd() / ".bae" / "runs.db"


def percentile(values: Sequence[float], p: int) -> float:
    """Nearest-rank percentile: always an observed value, so p95 of few calls is honest."""
    if not values or not 0 < p <= 100:
        raise ValueError(f"percentile needs values and 0 < p <= 100, got {len(values)} values, p={p}")
    ordered = sorted(values)
    return ordered[-(-p * len(ordered) // 100) - 1]


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """Read a ``--since`` value: an ISO date/datetime, or a span back from now (30m, 12h, 1d, 2w).

    A date or datetime without an offset is local time, as a user typing it means. The
    result is timezone-aware UTC so it compares directly with the log's timestamps.
    """
    value = text.strip().lower()
    match = _RELATIVE.fullmatch(value)
    try:
        if match:
            span = timedelta(**{_UNITS[match[2]]: int(match[1])})
            return (now or datetime.now(UTC)).astimezone(UTC) - span
        return datetime.fromisoformat(text.strip()).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise BaeInputError(
            f"--since {text!r} is neither a date (2024-05-01, 2024-05-01T12:00) "
            "nor a span back from now (30m, 12h, 1d, 2w)",
            cause=exc,
        ) from exc


def _utc_text(moment: datetime) -> str:
    """One fixed ISO format, so SQL string comparison orders timestamps correctly."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _version_key(version: str | None) -> tuple[int, int, str]:
    """Naive first, then v1 < v2 < v10, then any other names."""
    if version is None:
        return (0, 0, "")
    if re.fullmatch(r"v\d+", version):
        return (1, int(version[1:]), "")
    return (2, 0, version)


class RunLog:
    """Append-only log of runs and their LM calls in one SQLite file.

    Safe to share across threads and to open from many processes at once: every query uses
    its own short-lived connection. A writer also holds one idle connection open for its
    lifetime: when the last connection to a WAL database closes, SQLite checkpoints the WAL
    into the database and deletes it, with fsyncs, which made every logged run cost 15-20 ms
    on a plain disk and serialized a batch's runs behind the log. With the WAL kept, a commit
    is an append (``synchronous = NORMAL``: durable if bae crashes; a power loss may drop the
    last runs, never corrupt the log).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise RunLogError(f"no run log at {self.path} (nothing has been run with logging yet?)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunLogError(f"cannot create the run log's folder {self.path.parent}: {exc}", cause=exc) from exc
        self._init_schema()
        # Threads of one process take turns here: SQLite's busy handler would make them sleep in
        # growing steps (up to 100 ms) while another thread commits, stalling a batch's workers.
        self._write_lock = threading.Lock()
        if create:
            self._keep_wal()

    def _keep_wal(self) -> None:
        keeper = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        keeper.execute("PRAGMA user_version").fetchone()  # a read attaches it to the WAL
        weakref.finalize(self, keeper.close)

    @contextmanager
    def _connect(self, action: str) -> Iterator[sqlite3.Connection]:
        """A fresh connection; every sqlite failure leaves here as one readable line."""
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise RunLogError(
                f"cannot {action} run log {self.path}: {exc}: check --log-db / $BAE_LOG_DB, or move the file aside",
                cause=exc,
            ) from exc
        finally:
            if conn is not None:
                conn.close()

    def _init_schema(self) -> None:
        """Create the schema once, or migrate an older log; a current log is only checked, so reading
        takes no write lock."""
        with self._connect("open") as conn:
            if self._schema_version(conn) == SCHEMA_VERSION:
                return
            _ensure_wal(conn)
            conn.execute("BEGIN IMMEDIATE")
            found = self._schema_version(conn)  # re-read under the lock: another process may have won
            if found == 0:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables - {"runs", "calls"}:
                    raise RunLogError(
                        f"{self.path} is a SQLite database but not a bae run log: point --log-db elsewhere"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif found < SCHEMA_VERSION:
                for version in range(found, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        found: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise RunLogError(f"run log {self.path} has schema {found}, newer than this bae reads ({SCHEMA_VERSION})")
        return found

    def log_run(self, **run: Any) -> int:
        """Append one run and its calls atomically; returns the run's id. The fields are ``log_runs``'s."""
        return self.log_runs([run])[0]

    def log_runs(self, runs: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append runs and their calls in one transaction (a batch's delivered runs at once); returns their ids.

        Each run has ``started_at`` (a naive one is taken as local time), ``duration_s``, ``status``, ``error``,
        ``graph``, ``start_node``, ``version``, ``compiled_dir``, ``lm`` (the model name only), ``calls`` and
        optionally ``purpose``: ``"run"`` (production, the default) or ``"eval"`` (scoring a version on a dataset).
        """
        rows = [_run_row(run) for run in runs]
        ids: list[int] = []
        if not rows:
            return ids
        with self._write_lock, self._connect("write to") as conn:
            conn.execute("BEGIN IMMEDIATE")
            for run_row, calls in rows:
                cursor = conn.execute(
                    "INSERT INTO runs (started_at, duration_s, status, error, graph, start_node, version,"
                    " compiled_dir, lm, purpose) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    run_row,
                )
                run_id = cursor.lastrowid
                assert run_id is not None
                conn.executemany(
                    "INSERT INTO calls (run_id, seq, node, kind, source, latency_s, attempts, prompt_tokens,"
                    " completion_tokens, cost, error, cut, confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_call_row(run_id, seq, call) for seq, call in enumerate(calls)],
                )
                ids.append(run_id)
            conn.execute("COMMIT")
        return ids

    @staticmethod
    def _where(version: str | None, since: datetime | None, purpose: str | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if purpose is not None:
            clauses.append("r.purpose = ?")
            params.append(purpose)
        if version == NAIVE:
            clauses.append("r.version IS NULL")
        elif version is not None:
            clauses.append("r.version = ?")
            params.append(version)
        if since is not None:
            clauses.append("r.started_at >= ?")
            params.append(_utc_text(since))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def runs(
        self,
        *,
        version: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        purpose: str | None = None,
    ) -> list[LoggedRun]:
        """Logged runs, newest first; ``version=NAIVE`` selects runs without a compiled version,
        ``purpose`` only production (``"run"``) or evaluation (``"eval"``) runs (default: both)."""
        where, params = self._where(version, since, purpose)
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connect("read") as conn:
            rows = conn.execute(
                "SELECT r.id, r.started_at, r.duration_s, r.status, r.error, r.graph, r.start_node,"
                f" r.version, r.compiled_dir, r.lm, r.purpose FROM runs r{where}"
                f" ORDER BY r.started_at DESC, r.id DESC{limit_sql}",
                params,
            ).fetchall()
            calls: dict[int, list[CallRecord]] = {row[0]: [] for row in rows}
            if rows:
                marks = ",".join("?" * len(rows))
                for row in conn.execute(
                    "SELECT run_id, node, kind, source, latency_s, attempts, prompt_tokens,"
                    f" completion_tokens, cost, error, cut, confidence FROM calls WHERE run_id IN ({marks})"
                    " ORDER BY run_id, seq",
                    list(calls),
                ):
                    calls[row[0]].append(CallRecord(*row[1:]))
        return [
            LoggedRun(
                id=row[0],
                started_at=datetime.fromisoformat(row[1]),
                duration_s=row[2],
                status=row[3],
                error=row[4],
                graph=row[5],
                start_node=row[6],
                version=row[7],
                compiled_dir=row[8],
                lm=row[9],
                calls=tuple(calls[row[0]]),
                purpose=row[10],
            )
            for row in rows
        ]

    def versions(self, purpose: str | None = PRODUCTION) -> list[str | None]:
        """The versions that have runs in the log (``None``: naive runs), in version order."""
        where, params = self._where(None, None, purpose)
        with self._connect("read") as conn:
            rows = conn.execute(f"SELECT DISTINCT r.version FROM runs r{where}", params).fetchall()
        return sorted((row[0] for row in rows), key=_version_key)

    def stats(
        self, *, version: str | None = None, since: datetime | None = None, purpose: str | None = PRODUCTION
    ) -> Stats:
        """Per-version run outcomes and per-predictor call numbers for the selected runs: production
        runs by default, ``purpose="eval"`` for ``bae eval``'s, ``None`` for both."""
        where, params = self._where(version, since, purpose)
        with self._connect("read") as conn:
            run_rows = conn.execute(
                "SELECT r.version, COUNT(*), SUM(r.status = 'ok'), SUM(r.status = 'error'),"
                f" SUM(r.status = 'interrupted'), AVG(r.duration_s) FROM runs r{where} GROUP BY r.version",
                params,
            ).fetchall()
            call_rows = conn.execute(
                "SELECT r.version, c.node, c.kind, c.source, c.latency_s, c.attempts, c.prompt_tokens,"
                f" c.completion_tokens, c.cost, c.error FROM calls c JOIN runs r ON r.id = c.run_id{where}",
                params,
            ).fetchall()
        by_version: dict[str | None, list[CallRecord]] = {}
        latencies: dict[tuple[str | None, str, str], list[float]] = {}
        for row in call_rows:
            by_version.setdefault(row[0], []).append(CallRecord(*row[1:]))
            latencies.setdefault(row[:3], []).append(row[4])
        versions = tuple(
            VersionSummary(v, n, ok, err, intr, avg)
            for v, n, ok, err, intr, avg in sorted(run_rows, key=lambda r: _version_key(r[0]))
        )
        nodes = [
            _node_stats(version, row, latencies[(version, row.node, row.kind)])
            for version, calls in by_version.items()
            for row in usage_rows(calls)
        ]
        nodes.sort(key=lambda n: (_version_key(n.version), n.node, n.kind))
        return Stats(versions=versions, nodes=tuple(nodes))


def _ensure_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL once; retried because SQLite does not wait for that lock.

    Changing journal mode needs an exclusive lock that SQLite takes without calling the
    busy handler, so processes racing to create the same log would otherwise fail.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")  # returns the old mode if it could not switch
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(0.005, 0.05))


def _run_row(run: Mapping[str, Any]) -> tuple[tuple[Any, ...], Sequence[CallRecord]]:
    """One run's ``runs`` row and its calls, checked before anything is written."""
    status, purpose, calls = run["status"], run.get("purpose", PRODUCTION), run["calls"]
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {sorted(RUN_STATUSES)}, got {status!r}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(PURPOSES)}, got {purpose!r}")
    for call in calls:
        if call.kind not in CALL_KINDS or call.source not in CALL_SOURCES:
            raise ValueError(f"bad call record kind={call.kind!r} source={call.source!r}")
    compiled_dir = run["compiled_dir"]
    row = (
        _utc_text(run["started_at"]), float(run["duration_s"]), status, redact(run["error"]), run["graph"],
        run["start_node"], run["version"], None if compiled_dir is None else str(compiled_dir), redact(run["lm"]),
        purpose,
    )  # fmt: skip
    return row, calls


def _call_row(run_id: int, seq: int, c: CallRecord) -> tuple[Any, ...]:
    return (
        run_id, seq, c.node, c.kind, c.source, float(c.latency_s), c.attempts,
        c.prompt_tokens, c.completion_tokens, c.cost, redact(c.error), c.cut, c.confidence,
    )  # fmt: skip


def _node_stats(version: str | None, row: UsageRow, latencies: list[float]) -> NodeStats:
    """One predictor's figures in the log, from its calls added up (``bae.usage``) and their latencies."""
    return NodeStats(
        version=version,
        node=row.node,
        kind=row.kind,
        calls=row.calls,
        optimized_share=row.optimized / row.calls,
        naive_share=row.naive / row.calls,
        stale_share=row.stale / row.calls,
        p50_latency_s=percentile(latencies, 50),
        p95_latency_s=percentile(latencies, 95),
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost=row.cost,
        error_rate=row.errors / row.calls,
    )


# -- writing runs as they end -------------------------------------------------------------------
class RunSink(Protocol):
    """Where finished runs are logged: a ``RunLog``, or a ``BackgroundLog`` in front of one."""

    def log_runs(self, runs: Sequence[Mapping[str, Any]]) -> object: ...


class BackgroundLog:
    """A run log written by one background thread, so a run never waits on SQLite.

    A write is a transaction with an fsync, and writers to one file take turns: done
    inline, that time is spent holding one of a server's concurrency slots. Here runs
    queue (bounded: a log that cannot keep up slows runs down rather than filling
    memory) and one thread writes them in order. ``flush`` waits for the queue to drain;
    ``close`` flushes and stops the thread.
    """

    def __init__(self, log: RunLog, max_pending: int = 10_000) -> None:
        self.log = log
        self._pending: queue.Queue[Sequence[Mapping[str, Any]] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._write, name="bae-runlog", daemon=True)
        self._thread.start()

    def log_runs(self, runs: Sequence[Mapping[str, Any]]) -> None:
        self._pending.put(runs)

    def flush(self) -> None:
        self._pending.join()

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join()

    def _write(self) -> None:
        while True:
            runs = self._pending.get()
            try:
                if runs is None:
                    return
                self.log.log_runs(runs)
            except RunLogError as exc:  # a run that worked is not failed by its log
                logger.warning("run not logged: %s", exc.message)
            finally:
                self._pending.task_done()


@dataclass(frozen=True)
class RunSource:
    """What the log records about where runs come from: the graph reference, the compiled version and its
    directory (None: naive predictors), the LM's name (never a key or endpoint)."""

    graph: str
    version: str | None = None
    compiled_dir: str | None = None
    lm: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One ended run as the log keeps it, less where it came from (``RunSource``) and why it ran (``purpose``).

    Plain data, made where the run ran (``of``) and written wherever the writer is: a batch's runs may run
    in other processes (``--engine ray``) and are logged by the one process that drives the batch."""

    started_at: datetime
    duration_s: float
    status: str
    error: str | None
    start_node: str
    calls: tuple[CallRecord, ...]

    @classmethod
    def of(cls, run: Run, error: BaseException | None) -> RunRecord:
        """How ``run`` ended: ok, interrupted (Ctrl-C) or an error, whose message is kept."""
        if error is None:
            status, message = "ok", None
        elif isinstance(error, KeyboardInterrupt):
            status, message = "interrupted", None
        else:
            status = "error"
            message = error.message if isinstance(error, BaeError) else f"unexpected {type(error).__name__}: {error}"
        return cls(run.started_at, run.duration_s, status, message, type(run.start).__name__, tuple(run.calls))

    def fields(self) -> dict[str, Any]:
        """The record as ``RunLog.log_runs`` takes a run's fields (calls kept as they are, not copied)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class RecordRun(Observer):
    """Keeps the ``RunRecord`` of the one run it observes (a fresh one per run), for the caller to log later."""

    def __init__(self) -> None:
        self.record: RunRecord | None = None

    def run_ended(self, run: Run, result: GraphResult | None, error: BaseException | None) -> None:
        self.record = RunRecord.of(run, error)


class RunLogObserver(Observer):
    """The one writer of runs to the log: how each ended, how long it took, its LM calls.

    As an observer it logs every run it sees end in this process (``bae serve``, a single ``bae run``); a
    batch's driver gives it the records of the runs its workers ran, in input order (``log``: ``bae run
    --batch`` and ``bae eval``, on threads or on Ray alike), so both engines log the same rows. ``purpose``
    tells production runs from eval runs. A log write that fails is ``warn``ed, never a failed run.
    """

    def __init__(
        self,
        sink: RunSink,
        source: RunSource,
        purpose: str = PRODUCTION,
        warn: Callable[[str], None] = logger.warning,
    ) -> None:
        self.sink, self.source, self.purpose, self.warn = sink, source, purpose, warn

    def run_ended(self, run: Run, result: GraphResult | None, error: BaseException | None) -> None:
        self.log([RunRecord.of(run, error)])

    def log(self, records: Sequence[RunRecord]) -> None:
        """Write ``records`` (ended runs from ``self.source``) in one transaction, in the order given."""
        source = {
            "graph": self.source.graph,
            "version": self.source.version,
            "compiled_dir": self.source.compiled_dir,
            "lm": self.source.lm,
            "purpose": self.purpose,
        }
        runs = [{**source, **record.fields()} for record in records]
        try:
            self.sink.log_runs(runs)
        except RunLogError as exc:  # a run that worked is not failed by its log
            self.warn(f"run not logged: {exc.message}")


__all__ = [
    "EVAL", "NAIVE", "PRODUCTION", "PURPOSES", "SCHEMA_VERSION", "BackgroundLog", "LoggedRun", "NodeStats",
    "RecordRun", "RunLog", "RunLogError", "RunLogObserver", "RunRecord", "RunSink", "RunSource", "Stats",
    "VersionSummary", "default_log_path", "parse_since", "percentile",
]  # fmt: skip
