"""``bae run``: run a graph in production mode, one input or a batch, logging every LM call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bae import artifacts
from bae.exceptions import BaeInputError, BaeLMError
from bae.inputs import MAX_INPUT_BYTES, parse_input, read_batch
from bae.node import Node, node_json
from bae.recording import Recorder, record_line
from bae.result import CallRecord
from bae.runner import Outcome, Runner, Runtime, run_json, start_runtime
from bae.usage import UsageRow, usage_rows
from bae.wording import counted
from bae_cli.app import app
from bae_cli.common import JsonFlag, err, out, print_json, warn
from bae_cli.lm_options import LmOption, LmTimeoutOption, MaxTokensOption, ResponseFormatOption, lm_settings
from bae_cli.otel import OtelContentFlag, OtelFlag, start_otel
from bae_cli.progress import RunProgress, stage_bars


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
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="With --batch: runs in flight.")] = 8,
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
    given = (("--input", input_json is not None), ("--input-file", input_file is not None), ("-", stdin))
    single = [flag for flag, present in given if present]
    if batch is not None and single:
        raise BaeInputError(f"--batch {batch} holds the inputs: drop {' and '.join(single)}, or drop --batch")
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
    logs = [] if no_log else [RunLogObserver(RunLog(log_db or default_log_path()), runtime.source, warn=warn)]
    if runtime.source.lm is not None and runtime.source.lm.startswith("local/"):  # the embedded model
        with err.status("loading the embedded model"):
            from bae.local.engine import load_weights

            load_weights(runtime.backend.model)
    if batch is None:
        node = inputs[0][1]
        assert isinstance(node, Node)  # a single input that does not parse was refused above
        outcome = Runner(runtime, [*logs, RunProgress(err)], max_steps).run(1, node)
        if recorder is not None and outcome.result is not None:
            recorder.append([record_line(outcome.result, runtime.source.version)])
        _report_single(outcome, runtime, verbose, as_json)
    else:
        _run_batch(Runner(runtime, logs, max_steps), Batch(batch, inputs), output, recorder, concurrency, as_json)


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
    """A batch's runs so far: one outcome per input line that finished (or was refused)."""

    def __init__(self, source: Path, inputs: list[tuple[int, Node | BaeInputError]]) -> None:
        self.source, self.inputs, self.interrupted = source, len(inputs), False
        self.pending = [(line, item) for line, item in inputs if isinstance(item, Node)]
        self.outcomes = {line: Outcome(line, error=item) for line, item in inputs if not isinstance(item, Node)}
        self.refused = set(self.outcomes)  # their errors already say file:line

    def problem(self, line: int) -> str:
        """Why input ``line`` failed, as ``file:line: reason`` (once: a refused input's reason names it already)."""
        error = self.outcomes[line].error
        reason = error.message if error is not None else "failed"
        return reason if line in self.refused else f"{self.source}:{line}: {reason}"

    def finished(self) -> list[Outcome]:
        return [self.outcomes[line] for line in sorted(self.outcomes)]

    @property
    def failed(self) -> list[int]:
        return sorted(line for line, o in self.outcomes.items() if o.result is None)

    @property
    def calls(self) -> list[CallRecord]:
        return [c for o in self.outcomes.values() for c in o.calls]

    def exit_code(self) -> int:
        """0 when every run worked; the LM's own code when every failure was the LM's (a retry later
        may succeed); else 1, some runs failed."""
        errors = [self.outcomes[line].error for line in self.failed]
        if not errors:
            return 0
        return BaeLMError.exit_code if all(isinstance(e, BaeLMError) for e in errors) else 1


def _run_batch(
    runner: Runner, batch: Batch, output: Path | None, recorder: Recorder | None, concurrency: int, as_json: bool
) -> None:
    """Run, save, report, then exit by the batch's outcome: each step survives a Ctrl-C in the first."""
    from bae.executor import ThreadExecutor

    try:
        with stage_bars(err, transient=as_json) as bars:
            bars.stage("running batch", batch.inputs, completed=len(batch.outcomes))

            def done(index: int, outcome: Outcome) -> None:
                batch.outcomes[outcome.line] = outcome
                bars.advance()

            results = ThreadExecutor(concurrency).map(runner, batch.pending, done, _stopping)
        batch.interrupted = results.interrupted
        if results.abandoned:
            err.print("interrupted again: runs in flight abandoned")
    finally:
        _save(batch, runner.runtime.source.version, output, recorder, as_json)
    _report_batch(batch, runner.runtime, output, as_json)
    if batch.interrupted:
        raise KeyboardInterrupt
    if batch.exit_code():
        raise typer.Exit(batch.exit_code())


def _stopping(in_flight: int) -> None:
    """On Ctrl-C: start nothing new and keep the runs under way (a second Ctrl-C abandons them)."""
    if in_flight:
        err.print(f"interrupted: finishing {counted(in_flight, 'run')} in flight (Ctrl-C again to abandon them)")


def _report_batch(batch: Batch, runtime: Runtime, output: Path | None, as_json: bool) -> None:
    """The summary as JSON (results inline unless they went to --output), or failures, usage and counts on
    stderr: stdout holds the results alone (see ``_save``), so it can be piped."""
    failed = batch.failed
    rows = usage_rows(batch.calls)
    summary = {
        "inputs": batch.inputs,
        "ok": len(batch.outcomes) - len(failed),
        "failed": len(failed),
        "unfinished": batch.inputs - len(batch.outcomes),
        "version": runtime.source.version,
        "usage": [row.as_dict() for row in rows],
    }
    if as_json:
        results = None if output else [outcome.as_dict(runtime.source.version) for outcome in batch.finished()]
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


def _save(batch: Batch, version: str | None, output: Path | None, recorder: Recorder | None, as_json: bool) -> None:
    """Results and recorded traces in input order; on interruption, the finished ones (each result carries its
    line number). The results go to --output, else to stdout as JSON lines (with --json: into its object)."""
    finished = batch.finished()
    rows = "".join(json.dumps(outcome.as_dict(version), ensure_ascii=False) + "\n" for outcome in finished)
    if output is not None:
        artifacts.write_atomic(output.resolve(), rows.encode())
    elif not as_json:
        sys.stdout.write(rows)
        sys.stdout.flush()
    if recorder is not None:
        recorder.append(record_line(outcome.result, version) for outcome in finished if outcome.result is not None)
