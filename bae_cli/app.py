"""The ``bae`` command: one exit-code convention and one-line errors for every command."""

from __future__ import annotations

import gc
import os
import sys
import threading
import traceback
from typing import Annotated, NoReturn

import typer

from bae.exceptions import BaeError
from bae.version import __version__
from bae_cli import debug
from bae_cli.commands import LazyGroup
from bae_cli.debug import debugging

INTERRUPTED = 130
EXIT_CODES = (
    "Exit codes (every command): 0 ok; 1 a check failed (inspect or eval gate) or a run failed; "
    "2 usage or bad input (flags, graph file, JSON input, dataset); "
    "3 artifact error (compiled dir missing, corrupt, tampered, incompatible); "
    "4 LM unavailable or failing after retries; 130 interrupted. "
    "--debug (or BAE_DEBUG=1) shows the traceback of an error."
)

app = typer.Typer(
    name="bae",
    cls=LazyGroup,  # `bae --help` lists the commands without importing them
    help="Type-driven agent graphs, compiled with DSPy.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """(``--debug`` is added to the app and to every command by ``LazyGroup``: see ``bae_cli.debug``.)"""


def _fail(message: str, code: int, exc: BaseException | None = None) -> int:
    """Print the one error line (keys and endpoints an LM client quoted are redacted), after the
    traceback under --debug: the exit code is the same either way, so scripts can rely on it."""
    from bae.redaction import redact

    if exc is not None and debugging():
        traceback.print_exception(exc)
    typer.echo(f"bae: error: {redact(message)}", err=True)
    return code


def _usage_error(exc: typer.TyperException) -> int:
    """A usage error (bad flag, value, command) as one line pointing at the right --help."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `bae`: the help is already printed
        return exc.exit_code
    context = getattr(exc, "ctx", None)
    where = context.command_path if context is not None else "bae"
    return _fail(f"{exc.format_message().rstrip('.')} (see `{where} --help`)", exc.exit_code)


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's) and return its exit code, every failure bae
    understands turned into one line on stderr.

    Click runs outside its standalone mode so its usage errors come back here and print as one line
    (exit 2) like bae's own; Typer maps Ctrl-C to 130; bae's errors carry their exit code, and
    anything unexpected is exit 1 with a hint to use --debug. Tests call this in-process.
    """
    debug.reset()
    try:
        code = app(args=argv, prog_name="bae", standalone_mode=False)
        if code == INTERRUPTED:  # Typer turns Ctrl-C into a silent exit 130: say why the command stopped
            return _fail("interrupted", INTERRUPTED)
        return code if isinstance(code, int) else 0
    except typer.TyperException as exc:  # Click's usage errors (Typer vendors Click)
        return _usage_error(exc)
    except typer.Abort:
        return _fail("aborted", 1)
    except BaeError as exc:
        return _fail(exc.message, exc.exit_code, exc)
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED)
    except Exception as exc:
        return _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1, exc)


def main() -> NoReturn:
    """The ``bae`` program: ``run`` with the process's arguments, then exit with its code.

    Start-up allocates long-lived objects (modules, classes, a graph's Pydantic schemas) and frees
    almost none, so the cyclic garbage collector is off until a command that runs for long starts
    (``LazyGroup``): collections scanning a growing heap were a fifth of ``inspect``'s own time.
    What was imported before is frozen, so later collections never scan it.

    After Ctrl-C, Python would join worker threads still blocked in LM calls (a batch's abandoned runs,
    compile's scoring) before exiting, holding the exit until their calls return: with any left, they
    are left behind. Nothing is lost: artifacts and results are written whole or not at all.
    """
    gc.freeze()
    gc.disable()
    code = run()
    current = threading.current_thread()
    if code == INTERRUPTED and any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not current):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
