"""``--otel`` and ``--otel-content`` for ``bae run``, ``serve`` and ``compile``: export traces over OTLP/HTTP.

The provider is flushed and shut down when the command ends, whichever way it ends: normally,
on an error, on Ctrl-C, or on SIGTERM (see ``start_otel``), so spans still leave.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from functools import partial
from typing import Annotated

import typer
from typer.main import get_current_context  # Typer's vendored Click

from bae_cli.common import warn

OtelFlag = Annotated[
    bool,
    typer.Option(
        "--otel",
        envvar="BAE_OTEL",
        help="Export OpenTelemetry traces over OTLP/HTTP (the otel extra), configured by the standard "
        "OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME variables. Also $BAE_OTEL=1.",
    ),
]
OtelContentFlag = Annotated[
    bool,
    typer.Option(
        "--otel-content",
        envvar="BAE_OTEL_CONTENT",
        help="With --otel: also put node field values (redacted of keys and URLs) on spans. Off by default: "
        "they are customer data. Also $BAE_OTEL_CONTENT=1.",
    ),
]


def start_otel(otel: bool, content: bool = False, serving: bool = False) -> None:
    """With ``--otel``: install the exporting provider, and flush it when the current command ends.

    SIGTERM is Ctrl-C for a command (it unwinds, exit 130, flushing on the way); ``bae serve``'s uvicorn
    shuts down gracefully on it and then re-raises it, and that re-raise flushes before the process ends."""
    from bae import telemetry

    if not telemetry.enabled(otel):
        return
    shutdown = telemetry.install(content, warn)
    get_current_context().call_on_close(shutdown)  # runs as the command ends, whichever way
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, partial(_flush_and_die, shutdown) if serving else _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def _flush_and_die(shutdown: Callable[[], None], signum: int, frame: object) -> None:
    shutdown()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)
