"""What every command shares: consoles, JSON output, and loading graphs and compiled dirs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bae.exceptions import BaeInputError

if TYPE_CHECKING:
    from bae.loader import LoadedGraph

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one greppable line

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
LmOption = Annotated[
    str | None,
    typer.Option(
        "--lm",
        envvar="BAE_LM",
        help="LM to call: 'local' (embedded model, default), 'local:path.gguf', a LiteLLM model string "
        "such as 'openai/gpt-4o-mini', or 'module:factory' returning a DSPy LM. Also $BAE_LM.",
        show_default=False,
    ),
]


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def warn_stale(stale: set[tuple[str, str]]) -> None:
    """One line per compiled predictor that will not be used because its node changed since compile."""
    for node, kind in sorted(stale):
        warn(f"{node} ({kind}) changed since compile: using a naive predictor (stale)")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def graph_from(reference: str | None, manifest: dict[str, Any] | None, version_dir: Path | None = None) -> LoadedGraph:
    """The graph a command works on: the one named, else the one the manifest recorded at compile.

    A recorded file path is tried from the current directory, then from the project the
    compiled root sits in (``<project>/compiled/vN``), so artifacts work from either place.
    """
    from bae.loader import load_graph, split_reference  # imports the graph machinery: only when a graph is used

    if reference:
        return load_graph(reference)
    recorded = (manifest or {}).get("graph", {}).get("reference")
    if not recorded:
        raise BaeInputError("no graph given and none recorded in the manifest: pass GRAPH (file.py[:Name])")
    target, attribute = split_reference(recorded)
    if target.endswith(".py") and not Path(target).exists() and version_dir is not None:
        beside = version_dir.resolve().parent.parent / target
        if beside.exists():
            return load_graph(f"{beside}:{attribute}" if attribute else str(beside))
    return load_graph(recorded)
