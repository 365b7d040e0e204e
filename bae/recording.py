"""Recorded runs: a run's trace in the dataset format, each LM-made step saying what made it and how sure it was.

``bae run --record`` and ``bae serve --record`` write one line per successful run, which ``bae review``
reads (and ``bae compile`` and ``bae eval`` load as they are: the dataset loader reads ``node`` and
``fields`` and ignores the rest)::

    {"trace": [{"node": "Ticket", "fields": {...}},
               {"node": "Triage", "fields": {...}},
               {"node": "BillingIssue", "fields": {...}, "lm": [
                   {"predictor": "Triage.choice", "version": "v1", "source": "optimized", "confidence": 0.62},
                   {"predictor": "BillingIssue.make", "version": "v1", "source": "optimized", "confidence": 0.41}]}]}

A step's ``lm`` lists the calls that made it: the choice that picked its node and the call that made its
fields (``CallRecord.step``). ``bae run --json``, ``POST /run`` and ``bae eval --output`` show traces the
same way (``trace_steps``). Nothing else of a call is written: no prompt, no endpoint, no key.

Lines are appended whole: each write is one ``write`` to a file opened for appending, under a lock (and
``flock`` between processes), so concurrent runs of one server, or several servers, never interleave or
lose a line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeInputError
from bae.node import Node, steps_json
from bae.observe import Observer
from bae.result import CallRecord, GraphResult

if TYPE_CHECKING:
    from bae.run import Run

try:
    import fcntl as _fcntl
except ImportError:  # Windows
    _fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("bae")

NAIVE = "naive"  # the version name a step made by naive predictors records


def call_json(call: CallRecord, version: str | None) -> dict[str, Any]:
    """What a recorded step says about one call that made it."""
    return {
        "predictor": f"{call.node}.{call.kind}",
        "version": version or NAIVE,
        "source": call.source,
        "confidence": None if call.confidence is None else round(call.confidence, 4),
    }


def trace_steps(
    trace: Sequence[Node], calls: Iterable[CallRecord] = (), version: str | None = None
) -> list[dict[str, Any]]:
    """A trace as dataset steps, each step an LM made carrying its calls (``lm``)."""
    steps = steps_json(trace)
    for call in calls:
        if call.error is None and call.step is not None and 0 <= call.step < len(steps):
            steps[call.step].setdefault("lm", []).append(call_json(call, version))
    return steps


def record_line(result: GraphResult, version: str | None) -> dict[str, Any]:
    """One successful run as a line of a record file."""
    return {"trace": trace_steps(result.trace, result.calls, version)}


class RecordError(BaeInputError):
    """A record file that cannot be written."""


class Recorder:
    """Appends lines to one JSONL record file, whole, from any number of threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def check(self, flag: str = "--record") -> Recorder:
        """Refuse now (before any run) a path that cannot be appended to; creates nothing."""
        where = self.path if self.path.exists() else self.path.parent
        if self.path.is_dir():
            raise RecordError(f"{flag} {self.path} is a directory: give a file path (JSONL)")
        if not self.path.parent.is_dir():
            raise RecordError(f"{flag} {self.path} is in a folder that does not exist: create it, or give another path")
        if not os.access(where, os.W_OK):
            raise RecordError(f"{flag} {self.path} is not writable: check its permissions, or give another path")
        return self

    def append(self, lines: Iterable[dict[str, Any]]) -> int:
        """Append ``lines`` in order with one write; returns how many were written."""
        encoded = [json.dumps(line, ensure_ascii=False) + "\n" for line in lines]
        if not encoded:
            return 0
        data = memoryview("".join(encoded).encode("utf-8"))
        try:
            with self._lock, _appending(self.path) as fd:
                while data:
                    data = data[os.write(fd, data) :]
        except OSError as exc:
            raise RecordError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return len(encoded)


@contextmanager
def _appending(path: Path) -> Iterator[int]:
    """A descriptor open for appending, locked against other processes while it is held (``flock``; on
    Windows, which has none, ``O_APPEND`` alone)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if _fcntl is not None:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


class RecordingObserver(Observer):
    """Records every run that ends well, as it ends (``bae serve --record``); a failed write is ``warn``ed,
    never a failed run."""

    def __init__(
        self, recorder: Recorder, version: str | None, warn: Callable[[str], None] = logger.warning
    ) -> None:
        self.recorder, self.version, self.warn = recorder, version, warn

    def run_ended(self, run: Run, result: GraphResult | None, error: BaseException | None) -> None:
        if result is None:
            return
        try:
            self.recorder.append([record_line(result, self.version)])
        except RecordError as exc:
            self.warn(f"run not recorded: {exc.message}")


__all__ = ["RecordError", "Recorder", "RecordingObserver", "call_json", "record_line", "trace_steps"]
