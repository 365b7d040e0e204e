"""Gold traces: the JSONL training data ``bae compile`` learns from.

One trace per line: ``{"trace": [{"node": "Ticket", "fields": {...}}, ...]}``. Each
step is validated against the graph (known node, a real edge, fields that validate)
and built into real node instances, with ``Context`` fields resolved as a run would.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bae import jsontext
from bae.exceptions import BaeInputError
from bae.graph import Graph
from bae.jsontext import JSONTextError
from bae.node import Node, spec_of
from bae.resolve import RunState, context_inputs
from bae.wording import unknown_names


@dataclass(frozen=True)
class GoldTrace:
    """A validated trace and where it came from."""

    nodes: tuple[Node, ...]
    source: str

    @property
    def path(self) -> list[str]:
        return [type(n).__name__ for n in self.nodes]


@dataclass(frozen=True)
class Dataset:
    """The valid traces of a file, the reasons for every line that was not, and the file's digest."""

    path: Path
    traces: list[GoldTrace]
    invalid: list[str]
    sha256: str


class TraceError(ValueError):
    """Why one line is not a usable gold trace."""


def parse_trace(graph: Graph, record: Any, complete: bool = True) -> tuple[Node, ...]:
    """Build and check one trace record against ``graph``. Steps are counted from 1, as a person counts them.

    A record may carry more than its steps' ``node`` and ``fields`` (a recorded step's ``lm`` calls, a
    reviewed trace's ``review`` provenance): the rest is not read. ``complete=False`` builds a trace that
    stops before its end (``bae review`` shows a step of a trace still being changed)."""
    if not isinstance(record, dict) or not isinstance(record.get("trace"), list) or not record["trace"]:
        raise TraceError('expected {"trace": [{"node": ..., "fields": {...}}, ...]} with at least one step')
    state = RunState()
    nodes: list[Node] = []
    for number, step in enumerate(record["trace"], start=1):
        if not isinstance(step, dict) or not isinstance(step.get("node"), str):
            raise TraceError(f"step {number}: expected an object with a 'node' name")
        fields = step.get("fields", {})
        if not isinstance(fields, dict):
            raise TraceError(f"step {number} ({step['node']}): 'fields' must be an object")
        cls = graph.node(step["node"])
        if cls is None:
            raise TraceError(f"step {number}: unknown node {step['node']!r} (graph has: {_names(graph)})")
        if not nodes and cls is not graph.start:
            raise TraceError(f"step 1 is {cls.__name__}, but the graph starts at {graph.start.__name__}")
        if nodes and cls not in spec_of(type(nodes[-1])).successors:
            raise TraceError(f"step {number}: {type(nodes[-1]).__name__} -> {cls.__name__} is not an edge of the graph")
        inputs = context_inputs(cls, nodes[-1], state, strict=False) if nodes else {}
        # A field the node does not have is a typo or a stale trace: refused, as `bae serve` refuses it
        problems = unknown_names(fields, cls.model_fields)
        try:
            node = cls.model_validate({**inputs, **fields})
        except ValidationError as exc:
            raise TraceError(f"step {number} ({cls.__name__}): {'; '.join([*problems, _first_error(exc)])}") from exc
        if problems:
            raise TraceError(f"step {number} ({cls.__name__}): {'; '.join(problems)}")
        nodes.append(node)
        state.append(node)
    if complete and not spec_of(type(nodes[-1])).may_end:
        raise TraceError(f"the trace ends at {type(nodes[-1]).__name__}, which cannot end a run")
    return tuple(nodes)


def _names(graph: Graph) -> str:
    return ", ".join(cls.__name__ for cls in graph.nodes)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = [f"field {'.'.join(str(p) for p in e['loc']) or '?'}: {e['msg']}" for e in errors[:3]]
    return "; ".join(parts) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")


def load_dataset(path: Path, graph: Graph, strict: bool = True) -> Dataset:
    """Read a JSONL file of gold traces; ``strict`` stops at the first bad line, else bad lines are skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BaeInputError(
            f"dataset not found: {path}: check the path (gold traces, one JSON trace per line)"
        ) from None
    except OSError as exc:
        raise BaeInputError(f"dataset unreadable: {path}: {exc.strerror}: check the path and its permissions") from exc
    traces: list[GoldTrace] = []
    invalid: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            traces.append(GoldTrace(parse_trace(graph, jsontext.loads(line)), where))
        except (JSONTextError, TraceError) as exc:
            reason = f"{where}: {exc}"
            if strict:
                raise BaeInputError(f"{reason} (use --skip-invalid to skip bad lines)") from exc
            invalid.append(reason)
    if not traces:
        found = f" ({len(invalid)} invalid)" if invalid else ""
        raise BaeInputError(
            f'dataset {path} has no valid traces{found}: add gold traces, one {{"trace": [...]}} per line'
        )
    return Dataset(path=path, traces=traces, invalid=invalid, sha256=hashlib.sha256(raw).hexdigest())


def split_each(
    datasets: list[Dataset], dev_fraction: float, seed: int
) -> tuple[list[GoldTrace], list[GoldTrace]]:
    """Each file split on its own (``split``), the parts joined in file order: adding a file of traces (reviewed
    production runs) leaves the earlier files' split as it was, so a trace that was dev stays dev. A file of
    one trace goes to train."""
    train: list[GoldTrace] = []
    dev: list[GoldTrace] = []
    for dataset in datasets:
        if len(datasets) > 1 and len(dataset.traces) < 2:
            train.extend(dataset.traces)
            continue
        its_train, its_dev = split(dataset.traces, dev_fraction, seed)
        train.extend(its_train)
        dev.extend(its_dev)
    return train, dev


def split(traces: list[GoldTrace], dev_fraction: float, seed: int) -> tuple[list[GoldTrace], list[GoldTrace]]:
    """A seeded train/dev split; at least one trace on each side when there are two or more."""
    if not 0.0 < dev_fraction < 1.0:
        raise BaeInputError(f"--dev-split must be between 0 and 1 (exclusive), got {dev_fraction}: use e.g. 0.25")
    if len(traces) < 2:
        raise BaeInputError(
            f"need at least 2 traces to split train/dev, have {len(traces)}: add traces or pass --devset"
        )
    order = list(traces)
    random.Random(seed).shuffle(order)
    dev_size = min(max(1, round(len(order) * dev_fraction)), len(order) - 1)
    return order[dev_size:], order[:dev_size]
