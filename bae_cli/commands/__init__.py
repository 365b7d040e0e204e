"""Importing this package registers every command on the app."""

from bae_cli.commands import bundle_cmd, compile_cmd, inspect_cmd, manage_cmd, run_cmd, serve_cmd  # noqa: F401
