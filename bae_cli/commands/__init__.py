"""The commands, one module each, imported only when a command is run or shows its own --help.

Importing every command would import what all of them need (Rich progress bars, the graph
machinery, Pydantic models) before the fast ones (``stats``, ``inspect``, ``versions``)
could start, and ``bae --help`` needs only names and one line each. So the app's Click group
is a ``LazyGroup``: it lists the commands from ``COMMANDS`` and imports a command's module
when Click resolves that command (to run it, or for ``bae CMD --help``).
"""

from __future__ import annotations

import gc
from importlib import import_module
from typing import Any

from typer.core import TyperCommand, TyperGroup

from bae_cli.debug import DEBUG_OPTION

COMMANDS = {  # name: (module, the first paragraph of its docstring, shown by `bae --help`)
    "compile": ("compile_cmd", "Optimize every predictor of GRAPH from gold traces and write a new compiled version."),
    "eval": (
        "eval_cmd",
        "Score versions of GRAPH on a dataset of gold traces, side by side, exactly as compile scores dev.",
    ),
    "inspect": ("inspect_cmd", "Check compiled artifacts against the graph: a CI gate."),
    "stats": ("manage_cmd", "Usage, latency, tokens, cost and errors per version and node, and the version history."),
    "versions": ("manage_cmd", "List compiled versions, the active one marked."),
    "promote": ("manage_cmd", "Make a version active; rolling back is promoting an older version."),
    "graph": ("manage_cmd", "Show a graph's structure, and which nodes a compiled version optimized."),
    "run": ("run_cmd", "Run GRAPH with compiled predictors (or naive ones without --compiled)."),
    "serve": (
        "serve_cmd",
        "Serve GRAPH with a compiled version over HTTP until stopped (Ctrl-C or SIGTERM finish in-flight runs).",
    ),
    "bundle": ("bundle_cmd", "Write a self-contained deployment folder for one compiled version."),
    "review": (
        "review_cmd",
        "Review recorded runs of GRAPH one screen each, least confident first, and write the gold traces.",
    ),
}
BRIEF = {"inspect", "stats", "versions", "promote", "graph"}  # read, print, exit: no garbage collection needed


class _Listed(TyperCommand):
    """A command not imported yet, as ``bae --help`` lists it: a name and one line. Never run:
    ``resolve_command`` puts the real command in its place first."""

    def __init__(self, name: str, summary: str) -> None:
        super().__init__(name=name, help=summary, short_help=summary, add_help_option=False)


class LazyGroup(TyperGroup):
    """bae's Click group: every command listed from ``COMMANDS``, each module imported on first use,
    and ``--debug`` accepted before the command and after it (one option, given to the app and each command)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.params.append(DEBUG_OPTION)
        for command in self.commands.values():  # imported by an earlier call in this process (``app.run``)
            command.params.append(DEBUG_OPTION)
        for name, (_, summary) in COMMANDS.items():
            self.commands.setdefault(name, _Listed(name, summary))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in COMMANDS:
            self.load(args[0])
            if args[0] not in BRIEF:  # runs, serves, compiles: collect garbage (main() turned it off)
                gc.enable()
        return super().resolve_command(ctx, args)

    def load(self, name: str) -> Any:
        """The real command ``name``, importing its module (which registers it on the app) the first time."""
        command = self.commands.get(name)
        if not isinstance(command, _Listed):
            return command
        from typer.main import get_command_from_info

        from bae_cli.app import app

        import_module(f"bae_cli.commands.{COMMANDS[name][0]}")
        for info in app.registered_commands:
            if info.name == name:
                command = get_command_from_info(
                    info, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode
                )
                command.params.append(DEBUG_OPTION)
                self.commands[name] = command
        return self.commands[name]

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)
