"""``--debug`` (or ``BAE_DEBUG=1``): tracebacks for errors and bae's debug log on stderr.

One option, accepted before the command (``bae --debug run``) and after it (``bae run ... --debug``), as
the error messages suggest ("rerun with --debug"): ``LazyGroup`` gives it to the app and to every command.
"""

from __future__ import annotations

import os
from typing import Any

from typer.core import TyperOption

_flagged = False  # --debug was given in this invocation


def debugging() -> bool:
    """Whether to show tracebacks: ``--debug`` given, or ``BAE_DEBUG`` set."""
    return _flagged or os.environ.get("BAE_DEBUG", "") not in ("", "0")


def reset() -> None:
    """Forget a ``--debug`` of an earlier invocation in this process (``bae_cli.app.run`` starts each one so)."""
    global _flagged
    _flagged = False


def _flag(_: Any, __: Any, value: bool) -> None:
    global _flagged
    _flagged = _flagged or value
    if debugging():
        _debug_log()


def _debug_log() -> None:
    """bae's own debug log on stderr (what the engine loaded and how, retries, optimizer chatter).
    llama.cpp's line-by-line load log stays out: it is long and its errors already reach bae's messages."""
    import logging  # only under --debug: the fast commands' start-up does without

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bae").setLevel(logging.DEBUG)
    logging.getLogger("bae.local.model.llama_cpp").setLevel(logging.INFO)


DEBUG_OPTION = TyperOption(
    param_decls=["--debug"],
    is_flag=True,
    default=False,
    expose_value=False,
    callback=_flag,
    help="Show tracebacks for errors and bae's debug log on stderr (or BAE_DEBUG=1).",
)
