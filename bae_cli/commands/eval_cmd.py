"""``bae eval``: score versions on any dataset, side by side, and gate CI on quality."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bae import artifacts
from bae.exceptions import BaeError, BaeInputError
from bae.metrics import BUILTIN
from bae.wording import counted, score_change_text, score_text
from bae_cli.app import app
from bae_cli.common import (
    JsonFlag,
    confusion_tables,
    delta_text,
    err,
    interval_text,
    out,
    print_json,
    warn,
)
from bae_cli.engine_options import EngineOption, WorkersOption, check_engine, executor_for
from bae_cli.lm_options import LmOption, LmTimeoutOption, MaxTokensOption, ResponseFormatOption, lm_settings
from bae_cli.progress import stage_bars

if TYPE_CHECKING:
    from bae.evaluator import Evaluation
    from bae.graph import Graph


@app.command("eval")
def eval_(
    graph: Annotated[
        str | None,
        typer.Argument(help="file.py[:Name] or package.module:Name (default: the graph --compiled was compiled from)."),
    ] = None,
    compiled: Annotated[
        Path | None,
        typer.Option("--compiled", help="Compiled root (its active version) or version dir. Without it: naive."),
    ] = None,
    dataset: Annotated[
        Path, typer.Option("--dataset", help="Gold traces to score on, JSONL (the training data format).")
    ] = ...,  # type: ignore[assignment]
    versions: Annotated[
        list[str] | None,
        typer.Option("--version", help="A version of the compiled root to evaluate (repeatable; default: active)."),
    ] = None,
    naive: Annotated[bool, typer.Option("--naive", help="Also evaluate the naive (zero-shot) graph.")] = False,
    show_failures: Annotated[
        int, typer.Option("--show-failures", min=0, help="Show this many failing traces (gold vs predicted).")
    ] = 5,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write every run here (JSONL: one line per trace and version, dataset format)."),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", help="Gate: each version asked for (not --naive) must score at least this."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="Gate: compare the first version with this one (vN or naive) on the dataset."),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", min=0, help="With --baseline: how far below it the first may score (default 0)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="module:function(example, prediction, trace=None) -> 0..1 or bool: judges the fields the LM made "
            "(as `bae compile --metric`; default: exact for labels, token F1 for open text).",
        ),
    ] = None,
    lm: LmOption = None,
    max_tokens: MaxTokensOption = None,
    lm_timeout: LmTimeoutOption = None,
    response_format: ResponseFormatOption = None,
    threads: Annotated[
        int, typer.Option("--concurrency", "--threads", min=1, help="Runs in flight (with --engine ray: in all).")
    ] = 4,
    engine: EngineOption = "threads",
    workers: WorkersOption = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Stop a run after this many steps.")] = 100,
    strict: Annotated[
        bool, typer.Option("--strict/--skip-invalid", help="Stop at the first bad dataset line, or skip bad lines.")
    ] = True,
    log_db: Annotated[
        Path | None, typer.Option("--log-db", envvar="BAE_LOG_DB", help="Run log (SQLite). Default .bae/runs.db.")
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not write the run log.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Score versions of GRAPH on a dataset of gold traces, side by side, exactly as compile scores dev.

    Evaluates the active version, or each --version, plus the naive graph with --naive; deltas are
    against the first, each score and delta with a 95% interval. Gates: --min-score X (each version
    evaluated reaches X), --baseline vM [--max-drop D] (the first scores at most D below vM here).
    Exit 1 when a gate fails. Runs go to the run log as eval runs (`bae stats --eval`).
    """
    from bae.evaluator import evaluate
    from bae.runlog import default_log_path
    from bae.scoring import EvaluationInterrupted

    if output is not None and (output.is_dir() or not output.resolve().parent.is_dir()):
        problem = "is a directory" if output.is_dir() else "is in a folder that does not exist"
        raise BaeInputError(f"--output {output} {problem}: give a file path (JSONL) in an existing folder")
    check_engine(engine, workers)
    interrupted = False
    executor = executor_for(engine, workers, threads)
    with closing(executor), stage_bars(err, transient=as_json) as bars:
        try:
            result = evaluate(
                graph,  # None: the graph the first version was compiled from
                dataset,
                lm=lm,
                settings=lm_settings(max_tokens, lm_timeout, response_format),
                metric=metric,
                compiled=compiled,
                versions=versions or (),
                naive=naive,
                baseline=baseline,
                min_score=min_score,
                max_drop=max_drop,
                executor=executor,
                max_steps=max_steps,
                strict=strict,
                log=None if no_log else (log_db or default_log_path()),
                progress=bars,
                warn=warn,
            )
        except EvaluationInterrupted as exc:
            if exc.evaluation is None:
                raise
            result, interrupted = exc.evaluation, True
    if output is not None:
        lines = [json.dumps(line, ensure_ascii=False) for line in result.output_lines()]
        artifacts.write_atomic(output.resolve(), ("\n".join(lines) + "\n").encode() if lines else b"")
    if as_json:
        print_json({**result.as_dict(show_failures), "output": None if output is None else str(output)})
    else:
        _report(result, show_failures, output)
    if interrupted:
        raise KeyboardInterrupt
    failed = [gate for gate in result.gates if not gate.passed]
    if failed:
        raise BaeError("gate failed: " + "; ".join(gate.message for gate in failed))


def _with_delta(value: float | None, delta: float | None) -> str:
    if value is None or delta is None:
        return score_text(value)
    color = "green" if delta > 0 else "red" if delta < 0 else "dim"
    return f"{score_text(value)} [{color}]({score_change_text(delta)})[/]"


def _report(result: Evaluation, show_failures: int, output: Path | None) -> None:
    graph = result.structure
    first = result.columns[0]
    table = Table(
        title=f"{counted(len(result.traces), 'trace')} from {result.dataset}, lm {result.lm}"
        + ("" if result.metric == BUILTIN else f", metric {result.metric}")
        + (f" (deltas against {first.name})" if len(result.columns) > 1 else ""),
        show_edge=False,
    )
    table.add_column("")
    for column in result.columns:
        done = "" if column.complete else f" ({len(column.runs)} of {len(result.traces)}: interrupted)"
        table.add_column(escape(column.name + done), justify="right")
    deltas = [result.delta(c) if i else None for i, c in enumerate(result.columns)]
    pairs = list(zip(result.columns, deltas, strict=True))
    table.add_row("[bold]whole graph[/]", *(_with_delta(c.score.score, d and d["score"]) for c, d in pairs))
    table.add_row("  95% interval", *(interval_text(c.score.interval.as_list()) for c in result.columns))
    table.add_row("path accuracy", *(_with_delta(c.score.path_accuracy, d and d["path_accuracy"]) for c, d in pairs))
    keys = sorted({key for c in result.columns for key in c.score.per_predictor}, key=_predictor_order(graph))
    for node, kind in keys:
        name = f"{node}.{kind}"
        values = [(c.score.per_predictor.get((node, kind)), d and d["per_predictor"].get(name)) for c, d in pairs]
        table.add_row(name, *(_with_delta(value, delta) for value, delta in values))
    table.add_row("failed runs", *(str(c.score.errors) for c in result.columns))
    table.add_row("recorded at compile", *(score_text(c.recorded_score) for c in result.columns))
    table.add_row("LM calls", *(str(c.usage["calls"]) for c in result.columns))
    out.print(table)
    for column, delta in pairs[1:]:
        out.print(delta_text(delta["score"], delta["score_interval"], f"whole graph, {column.name} - {first.name}"))
    matrices = [c.score.confusion for c in result.columns]
    title = f": gold (rows) x answer (columns), {' / '.join(c.name for c in result.columns)}"
    for confusion in confusion_tables(graph, matrices, " / ", title):
        out.print(confusion)
    _print_failures(result, show_failures, output)
    for gate in result.gates:
        mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
        out.print(f"{mark} {gate.gate}: {escape(gate.message)}")
    if result.invalid:
        out.print(f"[yellow]skipped {counted(len(result.invalid), 'invalid dataset line')}[/]")


def _predictor_order(graph: Graph) -> Any:
    order = {cls.__name__: i for i, cls in enumerate(graph.nodes)}

    def key(item: tuple[str, str]) -> tuple[int, str, str]:
        return (order.get(item[0], len(order)), item[1] != "choice", item[0])

    return key


def _steps_text(path: list[str], steps: list[dict[str, Any]]) -> str:
    """``Ticket -> Triage -> BillingIssue {"priority": "high", ...}``: each step with the fields the LM made."""
    made = [{}, *(step["fields"] for step in steps)]
    shown = zip(path, made, strict=True)
    return " -> ".join(f"{name} {json.dumps(fields, ensure_ascii=False)}" if fields else name for name, fields in shown)


def _print_failures(result: Evaluation, show_failures: int, output: Path | None) -> None:
    data = result.as_dict(show_failures)
    if not data["failing"] or not show_failures:
        return
    where = f"every run is in {output}" if output else "--output F.jsonl writes every run"
    out.print(
        f"[bold]failing traces[/]: {data['failing']} of {len(result.traces)}, "
        f"first {len(data['failures'])} ({escape(where)})"
    )
    width = max(len(name) for name in ["gold", *(c.name for c in result.columns)])
    for failure in data["failures"]:
        out.print(f"{failure['source']}  {json.dumps(failure['input'], ensure_ascii=False)}", markup=False)
        gold = failure["gold"]
        out.print(f"  {'gold'.ljust(width)}  {_steps_text(gold['path'], gold['steps'])}", markup=False)
        for name, run in failure["runs"].items():
            verdict = f"error: {run['error']}" if run["error"] else f"score {score_text(run['score'])}"
            out.print(f"  {name.ljust(width)}  {_steps_text(run['path'], run['steps'])}  ({verdict})", markup=False)
