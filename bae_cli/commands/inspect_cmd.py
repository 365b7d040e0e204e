"""``bae inspect``: a CI gate over compiled artifacts, at the speed of reading JSON (no DSPy import)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from bae import artifacts
from bae.compiled_version import CompiledVersion, open_compiled
from bae.exceptions import BaeError
from bae.wording import score_text
from bae_cli.app import app
from bae_cli.common import JsonFlag, out, print_json

if TYPE_CHECKING:
    pass


def decision_path(entry: dict[str, Any]) -> str:
    """Which path a predictor takes with which LM: hidden-state decisions need the embedded model file they
    were read with (``bae.decisions``); every other LM, and another model file, get the demos."""
    decided = entry.get("decisions") or {}
    hidden = {name: d.get("method") for name, d in decided.items() if d.get("method") != "demos"}
    if not hidden:
        return "demos with any LM"
    methods = ", ".join(f"{name}: {method} ({decided[name]['loo'].get(method)})" for name, method in hidden.items())
    rest = [name for name in decided if name not in hidden]
    return (
        f"embedded model sha256 {str(entry.get('model_sha256'))[:12]}: hidden state, {methods}"
        + (f"; demos for {', '.join(rest)}" if rest else "")
        + "; any other LM: demos"
    )


def node_rows(version: CompiledVersion) -> list[dict[str, Any]]:
    """One row per predictor, its status decided by ``bae.freshness`` when the version was opened (as loading
    decides it)."""
    reasons = {(n["node"], n["kind"]): n.get("reason") for n in version.manifest.get("naive_predictors", [])}
    checks = {check.path: check for check in version.files}
    rows = []
    for held in version.predictors:
        entry = held.entry or {}
        row: dict[str, Any] = {
            "node": held.node,
            "kind": held.kind,
            "status": held.status,
            "demos": entry.get("demos", 0),
            "file": held.file,
            "checksum_ok": None if held.file is None else checks[held.file].ok,
            "decisions": entry.get("decisions") or {},
            "model_sha256": entry.get("model_sha256"),
            "path": decision_path(entry) if held.status == "optimized" else "naive predictor with any LM",
        }
        row["note"] = {
            "optimized": f"knn k={entry.get('demos', 0)} pool={entry['pool']}" if "pool" in entry else None,
            "stale": f"{'schema or options' if held.kind == 'choice' else 'schema'} changed since compile",
            "missing": "no longer in the graph",
            "naive": reasons.get(held.key) or "no compiled predictor",
        }[held.status]
        rows.append(row)
    return rows


@app.command("inspect")
def inspect(
    directory: Annotated[Path, typer.Argument(help="A compiled root (its active version) or a version dir.")] = Path(
        "compiled"
    ),
    graph: Annotated[
        str | None, typer.Option("--graph", help="Graph to check against (default: the one recorded at compile).")
    ] = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Fail the gate if the optimized dev score is below this.")
    ] = None,
    prompts: Annotated[bool, typer.Option("--prompts", help="Also print each predictor's rendered prompt.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check compiled artifacts against the graph: a CI gate.

    Exit 0 healthy; 1 gate failed (a stale, missing or naive predictor, or optimized score below
    --min-score); 2 usage error or graph that does not load; 3 invalid artifacts (missing or malformed
    manifest, checksum mismatch, unknown format, unsafe paths).
    """
    version = open_compiled(directory, graph=graph, strict=False)  # every problem reported before the verdict
    version_dir, manifest, extra = version.path, version.manifest, version.unexpected
    rows = node_rows(version)
    scores = manifest.get("scores", {})
    gate = [f"{r['node']}.{r['kind']}: {r['status']}" for r in rows if r["status"] != "optimized"]
    optimized_score = scores.get("optimized")
    if min_score is not None and (optimized_score is None or optimized_score < min_score):
        gate.append(f"optimized dev score {score_text(optimized_score)} is below --min-score {min_score:g}")
    invalid = version.invalid
    prompt_doc = version.prompts() if prompts and not invalid else None

    if as_json:
        print_json(
            {
                "version": manifest.get("version"),
                "path": str(version_dir),
                "manifest": {
                    k: manifest.get(k) for k in ("created_at", "graph", "optimizer", "dataset", "lm", "scores")
                },
                "nodes": rows,
                "invalid_files": [{"path": c.path, "problem": c.problem} for c in invalid],
                "unexpected_files": extra,
                "gate_failures": gate,
                "prompts": prompt_doc,
                "healthy": not gate and not invalid,
            }
        )
    else:
        _print_report(version_dir, manifest, rows, invalid, extra, gate, prompt_doc)
    artifacts.refuse_invalid(version.files)
    if gate:  # the report stays on stdout; the verdict is also the one error line on stderr, as for eval's gates
        raise BaeError("gate failed: " + "; ".join(gate))


def _print_report(
    version_dir: Path,
    manifest: dict[str, Any],
    rows: list[dict[str, Any]],
    invalid: list[artifacts.FileCheck],
    extra: list[str],
    gate: list[str],
    prompt_doc: Any,
) -> None:
    from rich.table import Table  # only for the report: --json does without

    scores = manifest.get("scores", {})
    dataset = manifest.get("dataset", {})
    out.print(
        f"[bold]{manifest.get('version')}[/] {version_dir}  created {manifest.get('created_at')}  "
        f"optimizer {manifest.get('optimizer', {}).get('name')}  lm {manifest.get('lm', {}).get('model')}"
    )
    out.print(
        f"dataset {dataset.get('path')} ({dataset.get('train')} train / {dataset.get('dev')} dev)  "
        f"dev score naive {score_text(scores.get('naive'))} -> optimized {score_text(scores.get('optimized'))}"
    )
    table = Table(show_edge=False)
    for column in ("node", "kind", "status", "demos", "checksum", "note", "path"):
        table.add_column(column)
    colors = {"optimized": "green", "naive": "yellow", "stale": "red", "missing": "red"}
    for r in rows:
        checksum = {True: "ok", False: "[red]MISMATCH[/]", None: "-"}[r["checksum_ok"]]
        status = f"[{colors[r['status']]}]{r['status']}[/]"
        table.add_row(r["node"], r["kind"], status, str(r["demos"]), checksum, r.get("note") or "", r["path"])
    out.print(table)
    for check in invalid:  # part of the report (stdout); the one-line error follows on stderr
        out.print(f"[red]invalid[/] {check.path}: {escape(check.problem or '')}")
    for path in extra:
        out.print(f"[yellow]unexpected file (not loaded)[/] {path}")
    if prompt_doc:
        for name, prompt in prompt_doc.items():
            out.rule(name)
            for message in prompt.get("messages", []):
                out.print(f"{message.get('role')}: {message.get('content')}", markup=False)
    out.print("[green]healthy[/]" if not gate and not invalid else "[red]gate failed[/]: " + "; ".join(gate))
