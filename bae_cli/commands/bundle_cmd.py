"""``bae bundle``: a self-contained deployment folder for one compiled version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bae.wording import counted
from bae_cli.app import app
from bae_cli.common import JsonFlag, out, print_json


@app.command("bundle")
def bundle(
    compiled: Annotated[Path, typer.Option("--compiled", help="Compiled root (active version) or version dir.")],
    output: Annotated[Path, typer.Option("--out", help="The folder to write; must not exist yet.")],
    graph: Annotated[
        str | None,
        typer.Argument(help="file.py[:Name] or package.module:Name (default: the graph --compiled was compiled from)."),
    ] = None,
    lm: Annotated[
        str | None,
        typer.Option(
            "--lm",
            envvar="BAE_LM",
            help="The LM the bundle will run with (its name and settings go to config.json, never keys or "
            "endpoints). Default: the one the version was compiled with.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a self-contained deployment folder for one compiled version.

    The folder holds the verified version, the graph module, pinned requirements, config.json,
    prompts.json and a README on running it with bae run and bae serve. Refuses a version whose
    files were tampered with, or that no longer matches the graph (stale or missing predictors):
    exit 3. Nothing is pickled; no key or endpoint is written.
    """
    from bae.bundle import write_bundle
    from bae.compiled_version import open_compiled

    version = open_compiled(compiled, graph=graph)
    model = None
    if lm is not None:
        from bae.lm_specs import resolve_lm

        model = resolve_lm(lm)
    made = write_bundle(version, output, model)
    if as_json:
        print_json({"path": str(made.path), "version": made.version, "graph": made.graph, "lm": made.lm})
        return
    pinned = counted(made.requirements, "pinned requirement")
    out.print(f"bundle of {made.version} written to {made.path} ({pinned})", markup=False)
    out.print(
        f"  cd {made.path} && bae run {made.graph} --compiled compiled --lm {made.lm} --input '{{...}}'", markup=False
    )
    out.print(f"  cd {made.path} && bae serve {made.graph} --compiled compiled --lm {made.lm}", markup=False)
