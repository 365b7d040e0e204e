"""Fast, DSPy-free commands over logs and artifacts: ``stats``, ``versions``, ``promote``, ``graph``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from bae import artifacts
from bae.exceptions import BaeArtifactError, BaeInputError
from bae.wording import score_text
from bae_cli.app import app
from bae_cli.common import JsonFlag, out, print_json

CompiledRoot = Annotated[Path, typer.Argument(help="A compiled root (holds versions.json).")]


def _history(root: Path, required: bool = True) -> list[dict[str, Any]] | None:
    """The version history of a compiled root; None for a root without one that was not asked for."""
    if not (root / artifacts.VERSIONS).exists():
        if required:
            raise BaeArtifactError(
                f"no versions.json in {root}: not a compiled root; pass the --out directory of `bae compile`"
            )
        return None
    data = artifacts.read_versions(root)
    return [{**v, "active": v["version"] == data["active"]} for v in data["versions"]]


def _runs_of(kind: str, versions: list[str | None]) -> str:
    """``production runs of v1, naive`` or ``no production runs``."""
    return f"{kind} of {', '.join(v or 'naive' for v in versions)}" if versions else f"no {kind}"


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"


@app.command("stats")
def stats(
    compiled: Annotated[
        Path | None,
        typer.Option("--compiled", help="Compiled root whose version history to show (default: ./compiled, if any)."),
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="Only runs of this version (or 'naive').")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only runs since an ISO time or 30m/12h/1d/2w.")] = None,
    log_db: Annotated[
        Path | None, typer.Option("--log-db", envvar="BAE_LOG_DB", help="Run log (SQLite). Default .bae/runs.db.")
    ] = None,
    evals: Annotated[
        bool, typer.Option("--eval", help="The runs `bae eval` made instead of production runs (left out otherwise).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Usage, latency, tokens, cost and errors per version and node, and the version history.

    Usage comes from the run log (production runs; --eval for bae eval's); the history (naive ->
    optimized dev scores) from versions.json."""
    from bae.runlog import EVAL, NAIVE, PRODUCTION, RunLog, default_log_path, parse_since

    moment = parse_since(since) if since else None
    path = log_db or default_log_path()
    purpose = EVAL if evals else PRODUCTION
    log = RunLog(path, create=False) if path.exists() else None
    figures = log.stats(version=version, since=moment, purpose=purpose) if log is not None else None
    root = compiled or Path("compiled")
    history = _history(root, required=compiled is not None)  # no ./compiled is normal: runs may be naive
    kind = "bae eval runs" if evals else "production runs"
    present: list[str | None] | None = None  # when nothing is selected: the versions the log has runs of
    if log is not None and figures is not None and not figures.versions:
        present = log.versions(purpose)
        anywhere = {NAIVE, *(v or NAIVE for v in log.versions(None)), *(v["version"] for v in history or [])}
        if version is not None and version not in anywhere:  # a typo, not a quiet week
            has = _runs_of(kind, present)
            raise BaeInputError(f"--version {version}: no such version in the run log or in {root}: the log has {has}")
    if as_json:
        print_json(
            {"log": str(path), "purpose": purpose, "runs": figures.as_dict() if figures else None, "versions": history}
        )
        return
    if history:
        table = Table(title=f"versions in {root}", show_edge=False)
        for column in ("version", "created", "optimizer", "traces", "naive -> optimized", "lm", "notes"):
            table.add_column(column)
        for v in history:
            mark = " [green](active)[/]" if v["active"] else ""
            table.add_row(
                v["version"] + mark,
                str(v.get("created_at", "")),
                str(v.get("optimizer", "")),
                str(v.get("dataset_size", "")),
                f"{score_text(v.get('naive_score'))} -> {score_text(v.get('optimized_score'))}",
                str(v.get("lm", "")),
                str(v.get("notes") or ""),
            )
        out.print(table)
    if figures is None:
        out.print(f"no run log at {path} yet: `bae run` writes one")
        return
    if present is not None:  # rather than empty tables
        selected = f"{f' of {version}' if version else ''}{f' since {since}' if since else ''}"
        out.print(f"no {kind}{selected} in {path}: it has {_runs_of(kind, present)}")
        return
    runs = Table(title=f"{'bae eval runs' if evals else 'runs'} ({path})", show_edge=False)
    for column in ("version", "runs", "ok", "errors", "interrupted", "mean duration"):
        runs.add_column(column, justify="left" if column == "version" else "right")
    for v in figures.versions:
        runs.add_row(
            v.version or "naive", str(v.runs), str(v.ok), str(v.errors), str(v.interrupted), f"{v.mean_duration_s:.2f}s"
        )
    out.print(runs)
    nodes = Table(title="LM calls", show_edge=False)
    nodes.add_column("version")
    nodes.add_column("predictor", no_wrap=True)
    for column in ("calls", "optimized", "naive", "stale", "p50", "p95", "tokens", "cost", "errors"):
        nodes.add_column(column, justify="right")
    for n in figures.nodes:
        tokens = (n.prompt_tokens or 0) + (n.completion_tokens or 0)
        nodes.add_row(
            n.version or "naive",
            f"{n.node}.{n.kind}",
            str(n.calls),
            _pct(n.optimized_share),
            _pct(n.naive_share),
            _pct(n.stale_share),
            f"{n.p50_latency_s * 1000:.0f} ms",
            f"{n.p95_latency_s * 1000:.0f} ms",
            str(tokens),
            "-" if n.cost is None else f"${n.cost:.4f}",
            _pct(n.error_rate),
        )
    out.print(nodes)


@app.command("versions")
def versions(directory: CompiledRoot = Path("compiled"), as_json: JsonFlag = False) -> None:
    """List compiled versions, the active one marked."""
    history = _history(directory) or []
    if as_json:
        print_json(history)
        return
    for v in history:
        mark = "*" if v["active"] else " "
        out.print(
            f"{mark} {v['version']:<5} {v.get('created_at', '')}  {v.get('optimizer', '')}  "
            f"naive {score_text(v.get('naive_score'))} -> optimized {score_text(v.get('optimized_score'))}  "
            f"{v.get('notes') or ''}",
            markup=False,
        )


@app.command("promote")
def promote(
    directory: CompiledRoot,
    version: Annotated[str, typer.Argument(help="The version to make active, e.g. v2 (an older one rolls back).")],
    as_json: JsonFlag = False,
) -> None:
    """Make a version active; rolling back is promoting an older version."""
    data = artifacts.promote(directory, version)
    if as_json:
        print_json({"compiled": str(directory), "active": data["active"]})
        return
    out.print(f"active version of {directory}: {data['active']}")


@app.command("graph")
def graph(
    reference: Annotated[str, typer.Argument(help="file.py[:Name] or package.module:Name.")],
    compiled: Annotated[
        Path | None,
        typer.Option("--compiled", help="Mark which predictors that version optimized (and which are stale)."),
    ] = None,
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Print a Mermaid diagram instead of a tree.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a graph's structure, and which nodes a compiled version optimized.

    Exit 1 when the graph has problems (``Graph.validate``), listed after the structure."""
    from bae.compiled_version import as_loaded, open_compiled
    from bae.freshness import NAIVE, OPTIMIZED

    loaded = as_loaded(reference)
    g = loaded.graph
    version: dict[str, Any] | None = None
    statuses: dict[tuple[str, str], str] = {}  # each predictor's status in the version (bae.freshness decides)
    if compiled is not None:
        opened = open_compiled(compiled, graph=loaded)
        version = {"version": opened.name, "path": str(opened.path)}
        statuses = {s.key: s.status for s in opened.predictors}
    if as_json:
        problems = g.validate()
        print_json(_graph_json(loaded.reference, g, version, statuses, problems))
        if problems:
            raise typer.Exit(1)
        return
    if mermaid:
        text = g.to_mermaid()
        for node in sorted({node for (node, _), status in statuses.items() if status == OPTIMIZED}):
            text += f"\n    style {node} stroke:#2a2,stroke-width:3px"
        out.print(text, markup=False)
        return

    def label(cls: type) -> str:
        spec = g.specs[cls]
        tags = []
        if not spec.routed:
            tags.append("custom")
        elif spec.decides:
            tags.append("decides")
        for kind in ("make", "choice"):
            status = statuses.get((cls.__name__, kind), NAIVE)
            if status != NAIVE:
                tags.append(f"[{'green' if status == OPTIMIZED else 'red'}]{kind} {status}[/]")
        if spec.may_end and spec.successors:  # a terminal node always ends: only a node that may also go on
            tags.append("may end")
        return f"[bold]{cls.__name__}[/]" + (f"  ({', '.join(tags)})" if tags else "")

    tree = Tree(label(g.start))
    seen = {g.start}

    def grow(branch: Tree, cls: type) -> None:
        for successor in g.specs[cls].successors:
            if successor in seen:
                branch.add(f"{successor.__name__} (see above)")
                continue
            seen.add(successor)
            grow(branch.add(label(successor)), successor)

    grow(tree, g.start)
    out.print(tree)
    problems = g.validate()
    for problem in problems:
        out.print(f"[red]problem[/] {problem}")
    if problems:
        raise typer.Exit(1)


def _graph_json(
    reference: str,
    g: Any,
    version: dict[str, Any] | None,
    statuses: dict[tuple[str, str], str],
    problems: list[Any],
) -> dict[str, Any]:
    """The structure as data: each node's edges and predictors (their status in the version, with
    --compiled; else null), the predictors the version holds that the graph no longer has, the problems."""
    from bae.freshness import MISSING

    kinds: dict[str, list[str]] = {}
    for node, kind in g.predictor_keys():
        kinds.setdefault(node, []).append(kind)
    return {
        "graph": reference,
        "start": g.start.__name__,
        "compiled": version,
        "nodes": [
            {
                "node": cls.__name__,
                "custom": not spec.routed,
                "decides": spec.decides,
                "successors": [s.__name__ for s in spec.successors],
                "may_end": spec.may_end,
                "predictors": {kind: statuses.get((cls.__name__, kind)) for kind in kinds.get(cls.__name__, [])},
            }
            for cls, spec in g.specs.items()
        ],
        "missing": [f"{node}.{kind}" for (node, kind), status in statuses.items() if status == MISSING],
        "mermaid": g.to_mermaid(),
        "problems": [{"kind": p.kind, "node": p.node, "field": p.field, "message": p.message} for p in problems],
    }
