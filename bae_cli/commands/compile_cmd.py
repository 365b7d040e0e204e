"""``bae compile``: gold traces in, a new version of optimized predictors out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bae.artifacts import read_versions
from bae.exceptions import BaeInputError
from bae.loader import load_function, load_graph, split_reference
from bae.metrics import BUILTIN
from bae.wording import counted, score_text
from bae_cli.app import app
from bae_cli.common import JsonFlag, confusion_tables, delta_text, err, interval_text, out, print_json, warn
from bae_cli.lm_options import LmOption, LmTimeoutOption, MaxTokensOption, ResponseFormatOption, lm_settings
from bae_cli.otel import OtelContentFlag, OtelFlag, start_otel
from bae_cli.progress import stage_bars

if TYPE_CHECKING:
    from bae.compiler import CompileReport
    from bae.graph import Graph

OPTIMIZER_HELP = (
    "knn (each call gets the --max-labeled-demos training examples most similar to its inputs; no LM calls "
    "to compile), bootstrap (BootstrapFewShot), labeled (LabeledFewShot), random-search, mipro (MIPROv2), gepa."
)


@app.command("compile")
def compile_(
    graph: Annotated[str, typer.Argument(help="file.py (uses its `graph`), file.py:Name or package.module:Name.")],
    trainset: Annotated[
        list[Path] | None,
        typer.Option(
            "--trainset",
            help="Gold traces, JSONL; repeat it to add files (bae review's gold traces): each is split into train "
            "and dev on its own, so an added file leaves the others' split as it was. Default: "
            "<graph stem>.train.jsonl beside the graph.",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Compiled root; the new version is vN+1.")] = Path("compiled"),
    lm: LmOption = None,
    max_tokens: MaxTokensOption = None,
    lm_timeout: LmTimeoutOption = None,
    response_format: ResponseFormatOption = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help=OPTIMIZER_HELP)] = "knn",
    max_demos: Annotated[int, typer.Option("--max-demos", min=0, help="Bootstrapped demos per predictor.")] = 4,
    max_labeled_demos: Annotated[
        int, typer.Option("--max-labeled-demos", min=0, help="Labeled demos per predictor.")
    ] = 8,
    min_examples: Annotated[
        int, typer.Option("--min-examples", min=1, help="A predictor with fewer examples stays naive.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the train/dev split and the optimizers.")] = 0,
    dev_split: Annotated[float, typer.Option("--dev-split", help="Fraction of traces held out for dev.")] = 0.25,
    devset: Annotated[Path | None, typer.Option("--devset", help="Dev traces from a file instead of a split.")] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="module:function(example, prediction, trace=None) -> 0..1 or bool: judges the fields the LM made, "
            "in the optimizer and in the dev scores (default: exact for labels, token F1 for open text).",
        ),
    ] = None,
    reflection_lm: Annotated[str | None, typer.Option("--reflection-lm", help="The reflecting LM for gepa.")] = None,
    strict: Annotated[
        bool, typer.Option("--strict/--skip-invalid", help="Stop at the first bad dataset line, or skip bad lines.")
    ] = True,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Concurrent runs while scoring.")] = 4,
    notes: Annotated[str, typer.Option("--notes", help="Free text recorded with the version.")] = "",
    activate: Annotated[
        bool | None,
        typer.Option(
            "--activate/--no-activate",
            help="Make the new version active, or never. Default: active unless nothing was optimized.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
    otel: OtelFlag = False,
    otel_content: OtelContentFlag = False,
) -> None:
    """Optimize every predictor of GRAPH from gold traces and write a new compiled version.

    Scores the naive and the optimized graph on the same dev traces and records both, with 95%
    intervals; warns when the dev split is small or leaves predictors or answers unmeasured.
    Writes atomically: an interrupted compile leaves no version behind.
    """
    from bae.compiler import CompileOptions, compile_graph
    from bae.lm_specs import resolve_lm
    from bae.optimizer import OPTIMIZERS, OptimizeSettings

    start_otel(otel, otel_content)
    if optimizer not in OPTIMIZERS:
        raise BaeInputError(f"unknown --optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    loaded = load_graph(graph)
    problems = loaded.graph.validate()
    if problems:
        listed = "; ".join(str(p) for p in problems)
        raise BaeInputError(f"graph {graph} is invalid: {listed}: fix it (`bae graph {graph}` shows its structure)")
    lm_bounds = lm_settings(max_tokens, lm_timeout, response_format)
    settings = OptimizeSettings(
        optimizer=optimizer,
        max_demos=max_demos,
        max_labeled_demos=max_labeled_demos,
        min_examples=min_examples,
        seed=seed,
        num_threads=threads,
        metric=load_function(metric, "--metric") if metric else None,
        reflection_lm=resolve_lm(reflection_lm, lm_bounds) if reflection_lm else None,
    )
    options = CompileOptions(
        trainset=trainset or [_default_trainset(graph)],
        out=out_dir,
        devset=devset,
        dev_split=dev_split,
        strict=strict,
        activate=activate,
        notes=notes,
        eval_threads=threads,
        settings=settings,
    )
    model = resolve_lm(lm, lm_bounds)
    with stage_bars(err, transient=as_json) as bars:
        report = compile_graph(loaded, model, options, bars)
    summary = report.as_dict()
    for warning in summary["warnings"]:
        warn(warning)
    if as_json:
        print_json(summary)
    else:
        _print_report(report, loaded.graph, out_dir)


def _default_trainset(graph: str) -> Path:
    """``<graph stem>.train.jsonl`` beside the graph file, which must exist when --trainset is not given."""
    target, _ = split_reference(graph)
    trainset = Path(target).with_name(f"{Path(target).stem}.train.jsonl")
    if not trainset.exists():
        raise BaeInputError(
            f"no --trainset given and no {trainset} (the default: <graph stem>.train.jsonl beside the graph): "
            "pass --trainset F.jsonl, gold traces, one JSON trace per line"
        )
    return trainset


def _print_report(report: CompileReport, graph: Graph, out_dir: Path) -> None:
    """Each predictor naive vs optimized, the whole graph's dev scores with their intervals and delta, the
    choices' confusion matrices, what it cost, and where the new version is (and whether it is active)."""
    summary = report.as_dict()
    table = Table(title=f"compiled {summary['version']} -> {summary['path']}", show_edge=False)
    for column in ("predictor", "examples", "demos", "naive", "optimized", "status", "decided by (leave-one-out)"):
        table.add_column(column, justify="right" if column in ("examples", "demos", "naive", "optimized") else "left")
    for row in summary["predictors"]:
        status = row["status"] if not row["reason"] else f"naive: {row['reason']}"
        table.add_row(
            f"{row['node']}.{row['kind']}",
            str(row["examples"]),
            f"{row['demos']} of {row['pool']}" if row.get("pool") else str(row["demos"]),
            score_text(row["naive_score"]),
            score_text(row["optimized_score"]),
            status,
            ", ".join(f"{name}: {d['method']} {d['loo'][d['method']]:.2f}" for name, d in row["decisions"].items()),
        )
    out.print(table)
    scores = summary["scores"]
    metric_note = "" if scores["metric"] == BUILTIN else f", metric {scores['metric']}"
    out.print(
        f"dev score (whole graph, {counted(report.manifest['dataset']['dev'], 'trace')}{metric_note}; 95% intervals): "
        f"naive {score_text(scores['naive'])} {interval_text(scores['naive_interval'])} -> optimized "
        f"{score_text(scores['optimized'])} {interval_text(scores['optimized_interval'])}   path accuracy "
        f"{score_text(scores['naive_path_accuracy'])} -> {score_text(scores['optimized_path_accuracy'])}"
    )
    out.print(delta_text(scores["optimized"] - scores["naive"], scores["delta_interval"], "optimized - naive"))
    matrices = [summary["confusion"]["naive"], summary["confusion"]["optimized"]]
    title = " on dev: gold (rows) x answer (columns), naive -> optimized"
    for confusion in confusion_tables(graph, matrices, " -> ", title):
        out.print(confusion)
    usage = summary["usage"]
    tokens = sum(stage["prompt_tokens"] + stage["completion_tokens"] for stage in usage.values())
    out.print(
        f"LM calls: {usage['optimize']['calls']} optimizing, {usage['naive_dev']['calls']} + "
        f"{usage['optimized_dev']['calls']} scoring dev ({tokens:,} tokens)"
    )
    if summary["invalid_lines"]:
        out.print(f"[yellow]skipped {counted(len(summary['invalid_lines']), 'invalid dataset line')}[/]")
    out.print(f"new version [bold]{summary['version']}[/] at {summary['path']} ({_activation(report, out_dir)})")


def _activation(report: CompileReport, root: Path) -> str:
    if report.activated:
        return "active"
    now = read_versions(root)["active"]
    kept = f"{now} stays active" if now else "no version is active"
    if report.optimized_any:
        return f"not active: --no-activate; {kept}"
    return f"[yellow]not active[/]: nothing was optimized, every predictor stayed naive; {kept} (--activate forces it)"
