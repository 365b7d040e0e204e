"""``bae run``: run a graph in production mode, one input or a batch, logging every LM call."""

from __future__ import annotations

import json
import sys
from contextlib import closing, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bae import artifacts
from bae.exceptions import BaeInputError, BaeLMError
from bae.executor import InOrder
from bae.inputs import MAX_INPUT_BYTES, parse_input, read_batch
from bae.node import Node, node_json
from bae.recording import Recorder, record_line
from bae.result import CallRecord
from bae.runner import (
    BatchWork,
    Outcome,
    Runner,
    RunRow,
    Runtime,
    RuntimeRecipe,
    embedded,
    run_json,
    start_runtime,
    warm,
)
from bae.usage import UsageRow, usage_rows
from bae.wording import counted
from bae_cli.app import app
from bae_cli.common import JsonFlag, err, out, print_json, warn
from bae_cli.engine_options import EngineOption, WorkersOption, check_engine, executor_for
from bae_cli.lm_options import LmOption, LmTimeoutOption, MaxTokensOption, ResponseFormatOption, lm_settings
from bae_cli.otel import OtelContentFlag, OtelFlag, start_otel
from bae_cli.progress import RunProgress, stage_bars

if TYPE_CHECKING:
    from bae.executor import Executor
    from bae.runlog import RunLogObserver


def _read_single(input_json: str | None, input_file: Path | None, stdin: bool) -> tuple[bytes, str]:
    """The one input's bytes, read no further than just past the size limit."""
    given = [x for x in (input_json is not None, input_file is not None, stdin) if x]
    if len(given) != 1:
        raise BaeInputError("give exactly one input: --input JSON, --input-file F, or - (stdin); or --batch F.jsonl")
    if input_json is not None:
        return input_json.encode(), "--input"
    if input_file is not None:
        try:
            with input_file.open("rb") as handle:
                return handle.read(MAX_INPUT_BYTES + 1), str(input_file)
        except OSError as exc:
            raise BaeInputError(f"cannot read --input-file {input_file}: {exc.strerror}: check the path") from None
    return sys.stdin.buffer.read(MAX_INPUT_BYTES + 1), "stdin"


@app.command("run")
def run(
    graph: Annotated[
        str | None,
        typer.Argument(help="file.py[:Name] or package.module:Name (default: the graph --compiled was compiled from)."),
    ] = None,
    dash: Annotated[
        str | None, typer.Argument(metavar="[-]", help="- reads the input JSON from stdin.", show_default=False)
    ] = None,
    compiled: Annotated[
        Path | None, typer.Option("--compiled", help="Compiled root (active version) or version dir.")
    ] = None,
    input_json: Annotated[str | None, typer.Option("--input", help="The start node's fields as JSON.")] = None,
    input_file: Annotated[Path | None, typer.Option("--input-file", help="Read the input JSON from a file.")] = None,
    batch: Annotated[
        Path | None,
        typer.Option(
            "--batch",
            help="JSONL file: one input per line. The results go to stdout, one JSON line each in input order "
            "(or to --output); the failures, the usage table and the counts go to stderr.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="With --batch: write the results here (JSONL) instead of stdout.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="With --batch: runs in flight (with --engine ray: in all).")
    ] = 8,
    engine: EngineOption = "threads",
    workers: WorkersOption = None,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="Append each successful run's trace here, in the dataset format, each LM-made step with the "
            "version, predictor and confidence that made it (a batch's in input order, once its runs are done or "
            "interrupted): what bae review reads.",
        ),
    ] = None,
    lm: LmOption = None,
    max_tokens: MaxTokensOption = None,
    lm_timeout: LmTimeoutOption = None,
    response_format: ResponseFormatOption = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Stop a run after this many steps.")] = 100,
    log_db: Annotated[
        Path | None, typer.Option("--log-db", envvar="BAE_LOG_DB", help="Run log (SQLite). Default .bae/runs.db.")
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not write the run log.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every node's fields.")] = False,
    as_json: JsonFlag = False,
    otel: OtelFlag = False,
    otel_content: OtelContentFlag = False,
) -> None:
    """Run GRAPH with compiled predictors (or naive ones without --compiled).

    Input is the start node's fields as JSON: --input '{...}', --input-file F, or - to read stdin
    (after GRAPH, if given). Prints the result, the trace and which nodes used optimized prompts.
    """
    from bae.optimized_lm import open_version
    from bae.runlog import RunLog, RunLogObserver, default_log_path

    settings = lm_settings(max_tokens, lm_timeout, response_format)
    start_otel(otel, otel_content)
    graph, stdin = _stdin_marker(graph, dash)
    if batch is None and output is not None:
        raise BaeInputError("--output goes with --batch: add --batch F.jsonl, or drop --output")
    if batch is None and (engine != "threads" or workers is not None):
        raise BaeInputError("--engine and --workers go with --batch: one input runs in this process")
    given = (("--input", input_json is not None), ("--input-file", input_file is not None), ("-", stdin))
    single = [flag for flag, present in given if present]
    if batch is not None and single:
        raise BaeInputError(f"--batch {batch} holds the inputs: drop {' and '.join(single)}, or drop --batch")
    check_engine(engine, workers)
    recorder = None if record is None else Recorder(record).check()
    version = open_version(compiled, graph, warn=warn)
    start = version.graph.graph.start
    if batch is not None:
        inputs = read_batch(batch, start)
    else:
        raw, where = _read_single(input_json, input_file, stdin)
        inputs = [(1, parse_input(raw, start, where))]
    runtime = start_runtime(version, lm, settings)
    if version.is_naive:
        err.print("[yellow]no --compiled: running naive (zero-shot) predictors[/]")
    log = None if no_log else RunLogObserver(RunLog(log_db or default_log_path()), runtime.source, warn=warn)
    if engine == "threads" and embedded(runtime):  # a Ray worker loads the embedded model itself
        with err.status("loading the embedded model"):
            warm(runtime)
    if batch is None:
        node = inputs[0][1]
        assert isinstance(node, Node)  # a single input that does not parse was refused above
        outcome = Runner(runtime, [*([log] if log else []), RunProgress(err)], max_steps).run(1, node)
        if recorder is not None and outcome.result is not None:
            recorder.append([record_line(outcome.result, runtime.source.version)])
        _report_single(outcome, runtime, verbose, as_json)
    else:
        work = BatchWork(RuntimeRecipe.of(runtime, lm, settings), max_steps, runtime)
        with closing(executor_for(engine, workers, concurrency)) as executor:
            _run_batch(work, executor, Batch(batch, inputs), log, output, recorder, as_json)


def _stdin_marker(graph: str | None, dash: str | None) -> tuple[str | None, bool]:
    """``bae run -`` and ``bae run GRAPH -`` both read stdin; anything else after GRAPH is a mistake."""
    if dash is not None and (dash != "-" or graph == "-"):
        raise BaeInputError(f"unexpected argument {dash!r}: after GRAPH only - (read stdin) is allowed")
    if graph == "-":
        return None, True
    return graph, dash == "-"


def _usage_table(rows: list[UsageRow], title: str) -> Table:
    table = Table(title=title, show_edge=False)
    table.add_column("predictor", no_wrap=True)
    for column in ("calls", "optimized", "naive", "stale", "errors", "latency", "tokens"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row.node}.{row.kind}",
            str(row.calls),
            f"[green]{row.optimized}[/]" if row.optimized else "0",
            f"[yellow]{row.naive}[/]" if row.naive else "0",
            f"[red]{row.stale}[/]" if row.stale else "0",
            f"[red]{row.errors}[/]" if row.errors else "0",
            f"{row.mean_latency_s * 1000:.0f} ms",
            str(row.tokens),
        )
    return table


def _report_single(outcome: Outcome, runtime: Runtime, verbose: bool, as_json: bool) -> None:
    if as_json:
        print_json(run_json(outcome, runtime.source.version))
    elif outcome.result is not None:
        result = outcome.result
        out.print(f"[bold]{type(result.node).__name__}[/] {json.dumps(node_json(result.node), ensure_ascii=False)}")
        out.print("trace: " + " -> ".join(result.path))
        if verbose:
            for node in result.trace:
                out.print(f"  {type(node).__name__}: {json.dumps(node_json(node), ensure_ascii=False)}", markup=False)
        out.print(_usage_table(usage_rows(outcome.calls), f"LM usage ({runtime.version.name})"))
    if outcome.error is not None:
        raise outcome.error


class Batch:
    """A batch's runs so far: one row per input line that finished (or was refused)."""

    def __init__(self, source: Path, inputs: list[tuple[int, Node | BaeInputError]]) -> None:
        self.source, self.inputs, self.interrupted = source, len(inputs), False
        self.pending = [(line, item.model_dump(mode="json")) for line, item in inputs if isinstance(item, Node)]
        self.rows = {
            line: RunRow(line, {"line": line, "ok": False, "error": item.message}, item.message)
            for line, item in inputs
            if not isinstance(item, Node)
        }
        self.refused = set(self.rows)  # their errors already say file:line

    def problem(self, line: int) -> str:
        """Why input ``line`` failed, as ``file:line: reason`` (once: a refused input's reason names it already)."""
        reason = self.rows[line].error or "failed"
        return reason if line in self.refused else f"{self.source}:{line}: {reason}"

    def finished(self) -> list[RunRow]:
        return [self.rows[line] for line in sorted(self.rows)]

    @property
    def failed(self) -> list[int]:
        return sorted(line for line, row in self.rows.items() if row.error is not None)

    @property
    def calls(self) -> list[CallRecord]:
        return [c for line in sorted(self.rows) for c in self.rows[line].calls]

    def exit_code(self) -> int:
        """0 when every run worked; the LM's own code when every failure was the LM's (a retry later
        may succeed); else 1, some runs failed."""
        failed = [self.rows[line] for line in self.failed]
        if not failed:
            return 0
        return BaeLMError.exit_code if all(row.lm_failed for row in failed) else 1


def _run_batch(
    work: BatchWork,
    executor: Executor,
    batch: Batch,
    log: RunLogObserver | None,
    output: Path | None,
    recorder: Recorder | None,
    as_json: bool,
) -> None:
    """Run on ``executor``, save, report, then exit by the batch's outcome: each step survives a Ctrl-C in the
    first. This process alone writes: the run log in input order as runs are delivered, the results and
    recorded traces at the end, whichever engine ran them."""
    ordered = InOrder[RunRow](lambda rows: log.log([r.record for r in rows if r.record]) if log else None)
    try:
        if executor.starting is not None:
            with err.status(executor.starting) if err.is_terminal else nullcontext():  # else it leaves a blank line
                executor.start()
        with stage_bars(err, transient=as_json) as bars:
            bars.stage("running batch", batch.inputs, completed=len(batch.rows))

            def done(index: int, row: RunRow) -> None:
                batch.rows[row.line] = row
                ordered.add(index, row)
                bars.advance()

            results = executor.map(work, batch.pending, done, _stopping)
        batch.interrupted = results.interrupted
        if results.abandoned:
            err.print("interrupted again: runs in flight abandoned")
    finally:
        ordered.finish()
        _save(batch, output, recorder, as_json)
    _report_batch(batch, work.runtime, output, as_json)
    if batch.interrupted:
        raise KeyboardInterrupt
    if batch.exit_code():
        raise typer.Exit(batch.exit_code())


def _stopping(in_flight: int) -> None:
    """On Ctrl-C: start nothing new and keep the runs under way (a second Ctrl-C abandons them)."""
    if in_flight:
        err.print(f"interrupted: finishing {counted(in_flight, 'run')} in flight (Ctrl-C again to abandon them)")


def _report_batch(batch: Batch, runtime: Runtime | None, output: Path | None, as_json: bool) -> None:
    """The summary as JSON (results inline unless they went to --output), or failures, usage and counts on
    stderr: stdout holds the results alone (see ``_save``), so it can be piped."""
    assert runtime is not None  # the driver's own
    failed = batch.failed
    rows = usage_rows(batch.calls)
    summary = {
        "inputs": batch.inputs,
        "ok": len(batch.rows) - len(failed),
        "failed": len(failed),
        "unfinished": batch.inputs - len(batch.rows),
        "version": runtime.source.version,
        "usage": [row.as_dict() for row in rows],
    }
    if as_json:
        results = None if output else [row.output for row in batch.finished()]
        print_json({**summary, "results": results})
        return
    for line in failed:
        err.print(escape(batch.problem(line)), style="red")
    err.print(_usage_table(rows, f"LM usage over the batch ({runtime.version.name})"))
    err.print(
        f"{summary['ok']} ok, {summary['failed']} failed"
        + (f", {summary['unfinished']} not run (interrupted)" if batch.interrupted else "")
        + (f"; results in {output}" if output else "")
    )


def _save(batch: Batch, output: Path | None, recorder: Recorder | None, as_json: bool) -> None:
    """Results and recorded traces in input order; on interruption, the finished ones (each result carries its
    line number). The results go to --output, else to stdout as JSON lines (with --json: into its object)."""
    finished = batch.finished()
    rows = "".join(json.dumps(row.output, ensure_ascii=False) + "\n" for row in finished)
    if output is not None:
        artifacts.write_atomic(output.resolve(), rows.encode())
    elif not as_json:
        sys.stdout.write(rows)
        sys.stdout.flush()
    if recorder is not None:
        recorder.append(recorded for recorded in (row.recorded for row in finished) if recorded is not None)
