"""``bae run``: run a graph in production mode, one input or a batch, logging every LM call."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bae import artifacts
from bae.exceptions import BaeError, BaeInputError, BaeLMError
from bae.graph import Graph
from bae.loader import LoadedGraph
from bae.node import Node, spec_of
from bae.result import CallRecord, GraphResult
from bae.usage import usage_rows
from bae_cli.app import app
from bae_cli.common import JsonFlag, LmOption, err, graph_from, out, print_json


def parse_input(text: str | bytes, start: type[Node], where: str) -> Node:
    """The start node from JSON, with every bad field named in one line."""
    try:
        data = json.loads(text)
    except UnicodeDecodeError:
        raise BaeInputError(f"{where}: input is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BaeInputError(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise BaeInputError(f"{where}: expected a JSON object with the fields of {start.__name__}")
    try:
        return start.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in exc.errors())
        raise BaeInputError(f"{where}: not a valid {start.__name__}: {problems}") from None


def node_json(node: Node) -> dict[str, Any]:
    """A node as JSON: LM-visible fields only (``Bind`` values are services, not data)."""
    bound = {f.name for f in spec_of(type(node)).bound}
    return node.model_dump(mode="json", exclude=bound)


def trace_json(result: GraphResult) -> list[dict[str, Any]]:
    return [{"node": type(n).__name__, "fields": node_json(n)} for n in result.trace]


@dataclass
class Outcome:
    """One run's result or failure, in the shape the CLI prints, logs and records."""

    line: int
    result: GraphResult | None = None
    error: BaeError | None = None
    calls: list[CallRecord] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        if self.result is None:
            return {"line": self.line, "ok": False, "error": self.error.message if self.error else "interrupted"}
        return {
            "line": self.line,
            "ok": True,
            "node": type(self.result.node).__name__,
            "result": node_json(self.result.node),
            "trace": trace_json(self.result),
        }


class Runner:
    """Runs inputs through one shared backend, logging each run and recording traces if asked."""

    def __init__(self, loaded: LoadedGraph, lm: Any, log: Any, record: Path | None, meta: dict[str, Any]) -> None:
        self.loaded, self.lm, self.log, self.record, self.meta = loaded, lm, log, record, meta
        self._record_lock = threading.Lock()

    @property
    def graph(self) -> Graph:
        return self.loaded.graph

    def run(self, line: int, start: Node, max_steps: int) -> Outcome:
        outcome = Outcome(line)
        started_at = datetime.now(UTC)
        began = time.perf_counter()
        status = "ok"
        try:
            outcome.result = self.graph.run(start, lm=self.lm, max_steps=max_steps, **self.loaded.deps)
            outcome.calls = outcome.result.calls
        except BaeError as exc:
            outcome.error, status = exc, "error"
            outcome.calls = exc.result.calls if exc.result is not None else []
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            outcome.duration_s = time.perf_counter() - began
            self._log(outcome, started_at, status)
        if outcome.result is not None and self.record is not None:
            self._record(outcome.result)
        return outcome

    def _log(self, outcome: Outcome, started_at: datetime, status: str) -> None:
        if self.log is None:
            return
        from bae.runlog import RunLogError

        try:
            self._write_log(outcome, started_at, status)
        except RunLogError as exc:  # a run that worked is not failed by its log
            err.print(f"[yellow]warning:[/] run not logged: {escape(exc.message)}")

    def _write_log(self, outcome: Outcome, started_at: datetime, status: str) -> None:
        self.log.log_run(
            started_at=started_at,
            duration_s=outcome.duration_s,
            status=status,
            error=outcome.error.message if outcome.error else None,
            graph=self.loaded.reference,
            start_node=self.graph.start.__name__,
            calls=outcome.calls,
            **self.meta,
        )

    def _record(self, result: GraphResult) -> None:
        line = json.dumps({"trace": trace_json(result)}, ensure_ascii=False) + "\n"
        with self._record_lock, open(self.record, "a", encoding="utf-8") as handle:
            handle.write(line)


def _read_single(input_json: str | None, input_file: Path | None, stdin: bool) -> tuple[bytes, str]:
    given = [x for x in (input_json is not None, input_file is not None, stdin) if x]
    if len(given) != 1:
        raise BaeInputError("give exactly one input: --input JSON, --input-file F, or - (stdin); or --batch F.jsonl")
    if input_json is not None:
        return input_json.encode(), "--input"
    if input_file is not None:
        try:
            return input_file.read_bytes(), str(input_file)
        except OSError as exc:
            raise BaeInputError(f"cannot read --input-file {input_file}: {exc.strerror}") from None
    return sys.stdin.buffer.read(), "stdin"


def _backend(loaded: LoadedGraph, compiled: Path | None, lm_spec: str | None) -> tuple[Any, dict[str, Any]]:
    from bae.lms import lm_name, resolve_lm
    from bae.optimized_lm import OptimizedLM
    from bae.optimizer import load_optimized

    model = resolve_lm(lm_spec)
    meta: dict[str, Any] = {"version": None, "compiled_dir": None, "lm": lm_name(model)}
    if compiled is None:
        err.print("[yellow]no --compiled: running naive (zero-shot) predictors[/]")
        return OptimizedLM(lm=model), meta
    loaded_version = load_optimized(loaded.graph, compiled)
    for node, kind in sorted(loaded_version.stale):
        err.print(f"[yellow]warning:[/] {node} ({kind}) changed since compile: using a naive predictor (stale)")
    meta.update(version=loaded_version.version, compiled_dir=str(loaded_version.version_dir))
    backend = OptimizedLM(loaded_version.predictors, stale=loaded_version.stale, version=meta["version"], lm=model)
    return backend, meta


@app.command("run")
def run(
    graph: Annotated[
        str | None, typer.Argument(help="file.py[:Name] or package.module:Name (default: the manifest's).")
    ] = None,
    compiled: Annotated[
        Path | None, typer.Option("--compiled", help="Compiled root (active version) or version dir.")
    ] = None,
    input_json: Annotated[str | None, typer.Option("--input", help="The start node's fields as JSON.")] = None,
    input_file: Annotated[Path | None, typer.Option("--input-file", help="Read the input JSON from a file.")] = None,
    batch: Annotated[Path | None, typer.Option("--batch", help="JSONL file: one input per line.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="With --batch: write results here (JSONL).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="With --batch: runs in flight.")] = 8,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append each run's trace here, in the dataset format.")
    ] = None,
    lm: LmOption = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Stop a run after this many steps.")] = 100,
    log_db: Annotated[
        Path | None, typer.Option("--log-db", envvar="BAE_LOG_DB", help="Run log (SQLite). Default .bae/runs.db.")
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not write the run log.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every node's fields.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run GRAPH with compiled predictors (or naive ones without --compiled).

    Input is the start node's fields as JSON: --input '{...}', --input-file F, or GRAPH - to read
    stdin. Prints the result, the trace and which nodes used optimized prompts.
    """
    from bae.runlog import RunLog, default_log_path

    stdin = graph == "-"
    graph = None if stdin else graph
    if batch is None and output is not None:
        raise BaeInputError("--output goes with --batch")
    version_dir = artifacts.resolve_version_dir(compiled) if compiled is not None else None
    manifest = artifacts.read_manifest(version_dir) if version_dir is not None else None
    loaded = graph_from(graph, manifest, version_dir)
    if batch is not None:
        inputs = _batch_inputs(batch, loaded.graph.start)
    else:
        raw, where = _read_single(input_json, input_file, stdin)
        inputs = [(1, parse_input(raw, loaded.graph.start, where))]
    backend, meta = _backend(loaded, compiled, lm)
    log = None if no_log else RunLog(log_db or default_log_path())
    runner = Runner(loaded, backend, log, record, meta)
    if batch is None:
        outcome = runner.run(1, inputs[0][1], max_steps)
        _report_single(outcome, meta, verbose, as_json)
    else:
        _run_batch(runner, inputs, output, concurrency, max_steps, meta, as_json)


def _batch_inputs(path: Path, start: type[Node]) -> list[tuple[int, Node | BaeInputError]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BaeInputError(f"cannot read --batch {path}: {exc.strerror}") from None
    inputs: list[tuple[int, Node | BaeInputError]] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            try:
                inputs.append((number, parse_input(line, start, f"{path}:{number}")))
            except BaeInputError as exc:
                inputs.append((number, exc))
    if not inputs:
        raise BaeInputError(f"--batch {path} has no inputs")
    return inputs


def _usage_table(calls: list[CallRecord], title: str) -> Table:
    table = Table(title=title, show_edge=False)
    table.add_column("predictor", no_wrap=True)
    for column in ("calls", "optimized", "naive", "stale", "errors", "latency", "tokens"):
        table.add_column(column, justify="right")
    for row in usage_rows(calls):
        table.add_row(
            f"{row.node}.{row.kind}",
            str(row.calls),
            f"[green]{row.optimized}[/]" if row.optimized else "0",
            f"[yellow]{row.naive}[/]" if row.naive else "0",
            f"[red]{row.stale}[/]" if row.stale else "0",
            f"[red]{row.errors}[/]" if row.errors else "0",
            f"{row.mean_latency_s * 1000:.0f} ms",
            str(row.prompt_tokens + row.completion_tokens),
        )
    return table


def _usage_json(calls: list[CallRecord]) -> list[dict[str, object]]:
    return [row.as_dict() for row in usage_rows(calls)]


def _report_single(outcome: Outcome, meta: dict[str, Any], verbose: bool, as_json: bool) -> None:
    if as_json:
        print_json({**outcome.as_dict(), "version": meta["version"], "usage": _usage_json(outcome.calls)})
    elif outcome.result is not None:
        result = outcome.result
        out.print(f"[bold]{type(result.node).__name__}[/] {json.dumps(node_json(result.node), ensure_ascii=False)}")
        out.print("trace: " + " -> ".join(result.path))
        if verbose:
            for node in result.trace:
                out.print(f"  {type(node).__name__}: {json.dumps(node_json(node), ensure_ascii=False)}", markup=False)
        version = meta["version"] or "naive"
        out.print(_usage_table(outcome.calls, f"LM usage ({version})"))
    if outcome.error is not None:
        raise outcome.error


def _run_batch(
    runner: Runner,
    inputs: list[tuple[int, Node | BaeInputError]],
    output: Path | None,
    concurrency: int,
    max_steps: int,
    meta: dict[str, Any],
    as_json: bool,
) -> None:
    outcomes: dict[int, Outcome] = {}
    for line, item in inputs:
        if isinstance(item, BaeInputError):
            outcomes[line] = Outcome(line, error=item)
    pending = [(line, item) for line, item in inputs if isinstance(item, Node)]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    pool = ThreadPoolExecutor(max_workers=concurrency)
    interrupted = False
    try:
        with Progress(*columns, console=err, transient=as_json) as progress:
            task = progress.add_task("running batch", total=len(inputs), completed=len(outcomes))
            futures = {pool.submit(runner.run, line, node, max_steps): line for line, node in pending}
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
                progress.advance(task)
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        _write_results(output, outcomes)
    calls = [c for o in outcomes.values() for c in o.calls]
    failed = sorted(line for line, o in outcomes.items() if o.result is None)
    summary = {
        "inputs": len(inputs),
        "ok": len(outcomes) - len(failed),
        "failed": len(failed),
        "unfinished": len(inputs) - len(outcomes),
        "version": meta["version"],
        "usage": _usage_json(calls),
    }
    if as_json:
        print_json({**summary, "results": [outcomes[k].as_dict() for k in sorted(outcomes)] if not output else None})
    else:
        for line in failed:
            message = outcomes[line].error.message if outcomes[line].error else "failed"
            err.print(f"[red]line {line}[/]: {escape(message)}")
        out.print(_usage_table(calls, f"LM usage over the batch ({meta['version'] or 'naive'})"))
        out.print(
            f"{summary['ok']} ok, {summary['failed']} failed"
            + (f", {summary['unfinished']} not run (interrupted)" if interrupted else "")
            + (f"; results in {output}" if output else "")
        )
    if interrupted:
        raise KeyboardInterrupt
    if failed:
        lm_errors = all(isinstance(outcomes[line].error, BaeLMError) for line in failed)
        raise typer.Exit(4 if lm_errors else 1)


def _write_results(output: Path | None, outcomes: dict[int, Outcome]) -> None:
    """Results in input order; on interruption, the finished ones (each carries its line number)."""
    if output is None:
        return
    lines = [json.dumps(outcomes[line].as_dict(), ensure_ascii=False) for line in sorted(outcomes)]
    artifacts.write_atomic(output.resolve(), ("\n".join(lines) + "\n").encode() if lines else b"")
