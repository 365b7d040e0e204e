"""The files of a review: the inputs read (record files, ``bae eval --output`` files) and the gold file written.

Every input line must be a trace of the graph, checked by the loader ``bae compile --trainset`` uses
(``bae.dataset.parse_trace``): a line that is not is one error naming its ``file:line`` (exit 2), before
any review work. A record line (``bae run --record``, ``bae serve --record``, or any dataset line) is
one input, its trace the answer to review. ``bae eval --output`` lines of one dataset trace (one per
version) are one input: its gold trace, read back from the dataset line the output names, is the answer
shown, each version's run beside it.

The gold file is appended to by rewriting it whole (temp file, fsync, rename) after each decision, so
it always holds whole lines, whatever stops the session: a line is there or not, never half. Its lines
are dataset lines with a ``review`` object beside the trace, which the dataset loader ignores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bae import artifacts, jsontext
from bae.dataset import TraceError, parse_trace
from bae.exceptions import BaeInputError
from bae.graph import Graph
from bae.jsontext import JSONTextError
from bae.node import Node
from bae.review.items import Answer, ReviewItem, input_key

RECORDED = "recorded"
GOLD = "gold"
_EVAL_KEYS = {"version", "source", "trace"}  # a `bae eval --output` line (with score, path_ok and error)
_SHAPES = (
    'expected a recorded run ({"trace": [...]}, as bae run --record and bae serve --record write) '
    "or a line of bae eval --output"
)


def read_inputs(paths: Sequence[Path], graph: Graph) -> list[ReviewItem]:
    """Every input of the files, in the order given, each input once (the first time it appears)."""
    items: list[ReviewItem] = []
    seen: set[str] = set()
    for path in paths:
        for item in _read_file(path, graph):
            if item.key not in seen:
                seen.add(item.key)
                item.index = len(items)
                items.append(item)
    return items


def _lines(path: Path, flag: str) -> list[tuple[int, Any]]:
    """The JSON of each non-empty line, numbered from 1; any other line is an error naming it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BaeInputError(f"{flag} {path}: no such file: check the path") from None
    except IsADirectoryError:
        raise BaeInputError(f"{flag} {path} is a directory: give a JSONL file") from None
    except OSError as exc:
        raise BaeInputError(f"{flag} {path}: cannot read it: {exc.strerror or exc}: check its permissions") from None
    records: list[tuple[int, Any]] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, jsontext.loads(line)))
        except JSONTextError as exc:
            raise BaeInputError(f"{path}:{number}: {exc}: {_SHAPES}") from None
    return records


def _read_file(path: Path, graph: Graph) -> list[ReviewItem]:
    records = _lines(path, "--input")
    if not records:
        raise BaeInputError(f"--input {path} is empty: {_SHAPES}")
    order: list[ReviewItem | str] = []  # a recorded run, or the source of an eval output's runs
    evals: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for number, record in records:
        where = f"{path}:{number}"
        if not isinstance(record, dict) or not isinstance(record.get("trace"), list) or not record["trace"]:
            raise BaeInputError(f"{where}: {_SHAPES}")
        if record.keys() >= _EVAL_KEYS:
            source = str(record["source"])
            if source not in evals:
                order.append(source)
            evals.setdefault(source, []).append((number, record))
        else:
            nodes = _trace(graph, record, where)
            order.append(ReviewItem(where, 0, nodes[0], Answer(RECORDED, nodes, _calls(record))))
    golds = _GoldLines(graph, path.parent)
    return [e if isinstance(e, ReviewItem) else _eval_item(graph, path, e, evals[e], golds) for e in order]


def _trace(graph: Graph, record: dict[str, Any], where: str) -> tuple[Node, ...]:
    try:
        return parse_trace(graph, record)
    except TraceError as exc:
        raise BaeInputError(f"{where}: {exc}: is this file from this graph?") from None


def _calls(record: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """The ``lm`` entries of a recorded trace's steps, by trace position."""
    calls: dict[int, list[dict[str, Any]]] = {}
    for position, step in enumerate(record["trace"]):
        entries = step.get("lm") if isinstance(step, dict) else None
        if isinstance(entries, list):
            calls[position] = [entry for entry in entries if isinstance(entry, dict)]
    return calls


def _eval_item(
    graph: Graph, path: Path, source: str, lines: list[tuple[int, dict[str, Any]]], golds: _GoldLines
) -> ReviewItem:
    """One dataset trace of an eval output: its gold trace (when the dataset line is still there) shown,
    each version's run beside it (a failed run as the path it took and its error)."""
    runs: list[Answer] = []
    for number, record in lines:
        label = str(record["version"])
        if record.get("error") is None:
            runs.append(Answer(label, _trace(graph, record, f"{path}:{number}"), _calls(record)))
        else:
            names = tuple(str(s.get("node")) for s in record["trace"] if isinstance(s, dict))
            runs.append(Answer(label, None, _calls(record), error=str(record["error"]), path=names))
    first, record = lines[0]
    start = _start(graph, record, f"{path}:{first}")
    gold = golds.get(source)
    if gold is not None:
        return ReviewItem(f"{path}:{first}", 0, start, Answer(GOLD, gold), runs, gold_source=source)
    complete = [run for run in runs if run.nodes is not None]
    shown = complete[0] if complete else runs[0]
    return ReviewItem(f"{path}:{first}", 0, start, shown, [run for run in runs if run is not shown], source)


def _start(graph: Graph, record: dict[str, Any], where: str) -> Node:
    """The start node of a run's trace, checked as the loader checks a trace's first step."""
    step = record["trace"][0]
    fields = step.get("fields") if isinstance(step, dict) else None
    if not isinstance(step, dict) or step.get("node") != graph.start.__name__ or not isinstance(fields, dict):
        raise BaeInputError(f"{where}: step 1 is not a {graph.start.__name__}: is this file from this graph?")
    try:
        return graph.start.model_validate(fields)
    except ValidationError as exc:
        raise BaeInputError(f"{where}: step 1 ({graph.start.__name__}): {exc.errors()[0]['msg']}") from None


class _GoldLines:
    """Gold traces read back from the dataset lines an eval output names (``file:line``), each file once;
    a relative path is tried from the working directory, then from the eval output's folder."""

    def __init__(self, graph: Graph, beside: Path) -> None:
        self.graph, self.beside = graph, beside
        self.files: dict[str, dict[int, Any] | None] = {}

    def get(self, source: str) -> tuple[Node, ...] | None:
        name, _, line = source.rpartition(":")
        if not line.isdigit():
            return None
        if name not in self.files:
            self.files[name] = self._read(Path(name))
        lines = self.files[name]
        record = None if lines is None else lines.get(int(line))
        try:
            return None if record is None else parse_trace(self.graph, record)
        except TraceError:
            return None

    def _read(self, path: Path) -> dict[int, Any] | None:
        for candidate in (path, self.beside / path) if not path.is_absolute() else (path,):
            if candidate.is_file():
                try:
                    return dict(_lines(candidate, "dataset"))
                except BaeInputError:
                    return None
        return None


class GoldFile:
    """The ``--out`` file: reviewed traces, one dataset line each, appended whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self) -> GoldFile:
        """Refuse now, before any review work, an ``--out`` that cannot be read back and written."""
        if self.path.is_dir():
            raise BaeInputError(f"--out {self.path} is a directory: give a file path (JSONL)")
        if not self.path.parent.is_dir():
            raise BaeInputError(f"--out {self.path} is in a folder that does not exist: create it, or give another")
        if not os.access(self.path.parent, os.W_OK):
            raise BaeInputError(f"--out {self.path}: its folder is not writable: check its permissions")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise BaeInputError(f"--out {self.path} is not readable and writable: check its permissions")
        return self

    def reviewed(self, graph: Graph) -> set[str]:
        """The inputs already reviewed (their keys): each line must be a trace of ``graph``."""
        if not self.path.exists():
            return set()
        keys = set()
        for number, record in _lines(self.path, "--out"):
            where = f"{self.path}:{number}"
            if not isinstance(record, dict):
                raise BaeInputError(f"{where}: not a dataset line: is --out the gold file of this graph?")
            keys.add(input_key(_trace(graph, record, where)[0]))
        return keys

    def append(self, line: dict[str, Any]) -> bytes:
        """Add ``line`` at the end, atomically; returns the bytes added (what ``remove_last`` takes back)."""
        added = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        old = self._bytes()
        if old and not old.endswith(b"\n"):
            old += b"\n"
        artifacts.write_atomic(self.path, old + added)
        return added

    def remove_last(self, added: bytes) -> bool:
        """Take back the line ``append`` added, if it is still the last one (False: it is not)."""
        old = self._bytes()
        if not old.endswith(added):
            return False
        artifacts.write_atomic(self.path, old[: len(old) - len(added)])
        return True

    def _bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""
