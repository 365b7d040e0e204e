"""``bae serve``: the compiled graph behind an HTTP API (FastAPI + uvicorn, the ``serve`` extra).

FastAPI, uvicorn and DSPy are imported inside the command, so no other command pays for them.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from pathlib import Path
from typing import Annotated

import typer

from bae.exceptions import BaeInputError
from bae_cli.app import app
from bae_cli.common import err, warn
from bae_cli.lm_options import LmOption, LmTimeoutOption, MaxTokensOption, ResponseFormatOption, lm_settings
from bae_cli.otel import OtelContentFlag, OtelFlag, start_otel


def _listen(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn: a taken port is one clear line (exit 2), and port 0 gets a real number.

    The socket is made from ``getaddrinfo``'s answer so it is a TCP socket by protocol too:
    asyncio only sets TCP_NODELAY on such sockets, and without it every response on a
    kept-alive connection waits ~40 ms for a delayed ACK (headers and body go out apart).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as exc:
        raise BaeInputError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise BaeInputError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    return listener


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@app.command("serve")
def serve(
    compiled: Annotated[Path, typer.Option("--compiled", help="Compiled root (active version) or version dir.")],
    graph: Annotated[
        str | None,
        typer.Argument(help="file.py[:Name] or package.module:Name (default: the graph --compiled was compiled from)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless you say so).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    lm: LmOption = None,
    max_tokens: MaxTokensOption = None,
    lm_timeout: LmTimeoutOption = None,
    response_format: ResponseFormatOption = None,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", min=1, help="Runs in flight at once; more requests wait.")
    ] = 8,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="Seconds per request, waiting included: then 504.")
    ] = 60.0,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Stop a run after this many steps.")] = 100,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="BAE_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' (all but /health and /ready). Prefer $BAE_TOKEN.",
            show_default=False,
        ),
    ] = None,
    log_db: Annotated[
        Path | None, typer.Option("--log-db", envvar="BAE_LOG_DB", help="Run log (SQLite). Default .bae/runs.db.")
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not write the run log.")] = False,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="Append each successful run's trace here as it ends (JSONL, the dataset format, each LM-made "
            "step with its version, predictor and confidence): production traffic for bae review.",
        ),
    ] = None,
    otel: OtelFlag = False,
    otel_content: OtelContentFlag = False,
) -> None:
    """Serve GRAPH with a compiled version over HTTP until stopped (Ctrl-C or SIGTERM finish in-flight runs).

    POST /run takes the start node's fields as JSON and returns the final node, the trace and
    the LM usage per node. GET /health, /ready, /version, /stats; OpenAPI docs at /docs.
    """
    try:
        import uvicorn

        from bae.serving import ServeSettings, create_app
    except ImportError as exc:
        raise BaeInputError(f"bae serve needs the serve extra: pip install 'bae[serve]' ({exc.name} missing)") from None
    from bae.optimized_lm import open_version
    from bae.recording import Recorder
    from bae.runlog import RunLog, default_log_path
    from bae.runner import start_runtime

    recorder = None if record is None else Recorder(record).check()  # before any work
    start_otel(otel, otel_content, serving=True)
    version = open_version(compiled, graph, warn=warn)  # every file verified, before listening
    runtime = start_runtime(version, lm, lm_settings(max_tokens, lm_timeout, response_format))
    logs = [] if no_log else [RunLog(log_db or default_log_path())]
    settings = ServeSettings(max_concurrency, timeout, max_steps, token or None)
    api = create_app(runtime, logs, settings, recorder)
    listener = _listen(host, port)
    if not token and not _loopback(host):
        warn(f"listening on {host} without a token: anyone who can reach this port can run the graph")
    bound = listener.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    err.print(
        f"bae serve: {version.name} of {runtime.graph.reference} on http://{where}:{bound} "
        f"(max concurrency {max_concurrency}, timeout {timeout:g}s, auth {'on' if token else 'off'}"
        f"{f', recording to {record}' if record else ''}); docs at /docs",
        markup=False,
        soft_wrap=True,
    )
    config = uvicorn.Config(api, log_level="info", timeout_graceful_shutdown=math.ceil(timeout) + 5)
    uvicorn.Server(config).run(sockets=[listener])  # Ctrl-C: in-flight runs finish, then exit 130 like any command
