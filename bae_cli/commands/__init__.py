"""The commands, one module each, imported only for the command being run.

Registering every command would import what all of them need (Rich progress bars, the
graph machinery) before the fast ones (``stats``, ``inspect``, ``versions``) could start.
A name not listed here (``--help``, a typo, a new command) imports them all, so nothing
is ever missing from the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

MODULES = {
    "compile": "compile_cmd",
    "eval": "eval_cmd",
    "inspect": "inspect_cmd",
    "stats": "manage_cmd",
    "versions": "manage_cmd",
    "promote": "manage_cmd",
    "graph": "manage_cmd",
    "run": "run_cmd",
    "serve": "serve_cmd",
    "bundle": "bundle_cmd",
}


def register(argv: Sequence[str]) -> None:
    """Register the command ``argv`` names (its first word that is not an option), or every command."""
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    modules = [MODULES[name]] if name in MODULES else list(dict.fromkeys(MODULES.values()))
    for module in modules:
        import_module(f"bae_cli.commands.{module}")
