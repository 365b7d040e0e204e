"""The start-up floor of any Typer CLI: one command with options like ``bae stats``', printing one Rich table.

``bench.startup`` times it beside the real commands, so the share of start-up that is
the CLI framework's (Typer builds a Pydantic ``TypeAdapter`` for every option it parses,
importing Pydantic) is measured, not guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
    pass


@app.command("stats")
def stats(
    compiled: Annotated[Path, typer.Option("--compiled")] = Path("compiled"),
    version: Annotated[str | None, typer.Option("--version")] = None,
    since: Annotated[str | None, typer.Option("--since")] = None,
    log_db: Annotated[Path | None, typer.Option("--log-db")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "runs")
    table.add_row(version or "v1", "0")
    Console().print(table)


if __name__ == "__main__":
    app()
