"""OpenTelemetry traces of graph runs: a ``bae.run`` span, a child per node step, a child per LM call.

Spans go through the *global* tracer provider, so a program that configured OpenTelemetry
gets bae's spans inside its own traces. Nothing here imports OpenTelemetry: a run is traced
only when ``opentelemetry.trace`` is already imported (anyone who configured a provider
imported it) and the global provider is a real one, so a process without the ``otel``
extra, or with it but unconfigured, pays one dictionary lookup per run.

LM-call spans follow the GenAI semantic conventions and are made from the ``CallRecord`` a
backend appends when a call ends (its latency gives the start time), so the backends
themselves know nothing of tracing. Field values never leave the process unless
``BAE_OTEL_CONTENT=1`` (``--otel-content``) opts in, and then only through ``redact``.

``install`` is the CLI's ``--otel``: an SDK provider exporting OTLP/HTTP, configured by the
standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables. A collector that cannot be
reached costs one warning line and a bounded wait at exit, not the exporter's line per retry.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeError, BaeInputError
from bae.result import CallRecord

if TYPE_CHECKING:
    from bae.graph import Graph
    from bae.node import Node
    from bae.resolve import RunState
    from bae.result import GraphResult

logger = logging.getLogger(__name__)

CONTENT_ENV = "BAE_OTEL_CONTENT"
ENABLE_ENV = "BAE_OTEL"
EXPORT_TIMEOUT_ENV = "OTEL_BSP_EXPORT_TIMEOUT"  # ms; the SDK reads but ignores it: bae bounds the flush at exit by it
FLUSH_MS = 2000  # at exit, spans that cannot leave in this long are dropped (said once): a run is not held up
_OFF = ("ProxyTracerProvider", "NoOpTracerProvider")
_tracers: dict[int, tuple[Any, Any]] = {}  # id(provider) -> (provider, its bae tracer)


def tracer() -> Any | None:
    """bae's tracer from the global provider, or None when no provider is configured (tracing off)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in _OFF:
        return None
    cached = _tracers.get(id(provider))
    if cached is None or cached[0] is not provider:
        from bae.version import __version__

        cached = (provider, provider.get_tracer("bae", __version__))
        _tracers[id(provider)] = cached
    return cached[1]


def _content() -> bool:
    return os.environ.get(CONTENT_ENV, "") not in ("", "0")


def _fields(node: Node) -> str:
    from bae.node import spec_of
    from bae.redaction import redact

    bound = {f.name for f in spec_of(type(node)).bound}  # Bind values are services, not data
    return redact(json.dumps(node.model_dump(mode="json", exclude=bound), ensure_ascii=False, default=str)) or ""


def _model(lm: Any) -> str | None:
    """The model an LM backend calls (a DSPy LM's ``model``), if it says."""
    inner = getattr(lm, "lm", None)
    if inner is None:
        dspy = sys.modules.get("dspy")
        inner = getattr(getattr(dspy, "settings", None), "lm", None) if dspy is not None else None
    model = getattr(inner, "model", None)
    return model if isinstance(model, str) else None


class _CallSpans(list[CallRecord]):
    """``RunState.calls`` while a run is traced: each appended ``CallRecord`` becomes an LM-call span,
    child of the step span current in the appending thread, ended when the call ended."""

    def __init__(self, tracer: Any, attributes: dict[str, Any]) -> None:
        super().__init__()
        self.tracer, self.attributes, self.live = tracer, attributes, True

    def append(self, record: CallRecord) -> None:
        super().append(record)
        if self.live and isinstance(record, CallRecord):
            _call_span(self.tracer, record, self.attributes)


def _call_span(tracer: Any, record: CallRecord, common: dict[str, Any]) -> None:
    from opentelemetry.trace import SpanKind

    end = time.time_ns()
    attributes = {
        **common,
        "bae.node": record.node,
        "bae.predictor.kind": record.kind,
        "bae.source": record.source,
        "bae.attempts": record.attempts,
    }
    if record.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
    if record.completion_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = record.completion_tokens
    if record.cost is not None:
        attributes["bae.cost_usd"] = record.cost
    model = common.get("gen_ai.request.model")
    span = tracer.start_span(
        f"chat {model}" if model else "chat",
        kind=SpanKind.CLIENT,
        start_time=end - int(record.latency_s * 1e9),
        attributes=attributes,
    )
    if record.error is not None:
        from opentelemetry.trace import Status, StatusCode

        from bae.redaction import redact

        message = redact(record.error) or ""
        span.set_attribute("error.type", _error_type(message))
        span.add_event("exception", {"exception.message": message})
        span.set_status(Status(StatusCode.ERROR, message))
    span.end(end_time=end)


def _error_type(message: str) -> str:
    """A failed call's error class from its record's text: a backend raises ``BaeParseError`` for answers that
    never parsed and ``BaeLMError`` for the rest; a bare class name is an interruption (``KeyboardInterrupt``)."""
    if message.isidentifier():
        return message
    return "BaeParseError" if "did not parse" in message else "BaeLMError"


def _failed(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    from bae.redaction import redact

    message = redact(exc.message if isinstance(exc, BaeError) else str(exc)) or type(exc).__name__
    span.set_attribute("error.type", type(exc).__name__)
    span.add_event(
        "exception",
        {"exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}", "exception.message": message},
    )
    span.set_status(Status(StatusCode.ERROR, message))


Step = Callable[["Node", Any, "RunState"], "Node | None"]
RunLoop = Callable[["Node", Any, int, "RunState", Step], "GraphResult"]


def traced_run(
    tracer: Any, graph: Graph, start_node: Node, lm: Any, max_steps: int, state: RunState, loop: RunLoop
) -> GraphResult:
    """``loop`` (the graph's run loop) inside a ``bae.run`` span, each step inside a ``bae.step`` span."""
    from opentelemetry.context import attach, detach
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

    content = _content()
    version = getattr(lm, "version", None)
    common: dict[str, Any] = {"gen_ai.operation.name": "chat"}
    model = _model(lm)
    if model:
        common["gen_ai.request.model"] = model
    if version:
        common["bae.version"] = version
    attributes: dict[str, Any] = {
        "bae.graph": f"{graph.start.__module__}:{graph.start.__qualname__}",
        "bae.start_node": graph.start.__name__,
        **({"bae.version": version} if version else {}),
    }
    if content:
        attributes["bae.input"] = _fields(start_node)
    calls = _CallSpans(tracer, common)
    state.calls = calls

    def step(node: Node, lm: Any, state: RunState) -> Node | None:
        name = type(node).__name__
        span = tracer.start_span("bae.step " + name, attributes={"bae.node": name})
        token = attach(set_span_in_context(span))  # not use_span: a generator context manager costs more
        try:
            following = graph._step(node, lm, state)
        except BaseException as exc:
            _failed(span, exc)
            raise
        else:
            if following is not None:
                span.set_attribute("bae.next", type(following).__name__)
                if content:
                    span.set_attribute("bae.output", _fields(following))
            return following
        finally:
            detach(token)
            span.end()

    span = tracer.start_span("bae.run", attributes=attributes)
    token = attach(set_span_in_context(span))
    try:
        result = loop(start_node, lm, max_steps, state, step)
    except BaseException as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            span.set_attribute("bae.path", partial.path)
        span.set_attribute("bae.status", "interrupted" if isinstance(exc, KeyboardInterrupt) else "error")
        _failed(span, exc)
        raise
    else:
        span.set_attribute("bae.path", result.path)
        span.set_attribute("bae.status", "ok")
        if content:
            span.set_attribute("bae.output", _fields(result.node))
        span.set_status(Status(StatusCode.OK))
        return result
    finally:
        calls.live = False
        detach(token)
        span.end()


# -- the CLI's --otel: an SDK provider exporting OTLP/HTTP --------------------------------
_installed: tuple[Any, _Watched] | None = None  # (provider, its exporter)


def enabled(flag: bool) -> bool:
    """``--otel`` or ``BAE_OTEL=1``."""
    return flag or os.environ.get(ENABLE_ENV, "") not in ("", "0")


class _Watched:
    """The OTLP exporter, watched: the first batch it fails to send is one warning (what to check), and its
    own line per retry goes to bae's debug log. Duck-typed as a ``SpanExporter``, so that importing this
    module imports no OpenTelemetry."""

    def __init__(self, exporter: Any, warn: Callable[[str], None]) -> None:
        self.exporter, self.warn = exporter, warn
        self._told = threading.Event()

    def export(self, spans: Any) -> Any:
        result = self.exporter.export(spans)
        if getattr(result, "name", None) != "SUCCESS":
            self.lost()
        return result

    def lost(self) -> None:
        if not self._told.is_set():
            self._told.set()
            self.warn(
                "OpenTelemetry: spans not exported, the collector did not take them: check "
                "OTEL_EXPORTER_OTLP_ENDPOINT and that the collector runs (--debug shows each attempt)"
            )

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.exporter.force_flush(timeout_millis))


class _ToDebugLog(logging.Handler):
    """The OTLP exporter's own log lines (one per retry, with the cause) as bae's debug log."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("OTLP exporter: %s", record.getMessage())


def _flush_ms() -> int:
    try:
        return max(0, int(os.environ.get(EXPORT_TIMEOUT_ENV, "") or FLUSH_MS))
    except ValueError:
        return FLUSH_MS


def install(content: bool = False, warn: Callable[[str], None] = logger.warning) -> Callable[[], None]:
    """Install an SDK tracer provider exporting OTLP/HTTP as the global one; returns its flush-and-shutdown.

    The exporter reads ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``, ``_HEADERS``, ``_TIMEOUT`` and the
    resource ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` itself. Without the extra: exit 2, one line.
    A batch that cannot be exported is one ``warn`` line for the process's life.
    """
    global _installed
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise BaeInputError(
            f"--otel needs the otel extra: pip install 'bae[otel]' ({getattr(exc, 'name', None) or exc} missing)"
        ) from None
    if content:
        os.environ[CONTENT_ENV] = "1"
    if _installed is None:
        exporter_log = logging.getLogger("opentelemetry.exporter")
        exporter_log.addHandler(_ToDebugLog())
        exporter_log.propagate = False
        defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "bae"}
        provider = TracerProvider(resource=Resource.create(defaults))
        watched = _Watched(OTLPSpanExporter(), warn)
        provider.add_span_processor(BatchSpanProcessor(watched))  # type: ignore[arg-type]  # duck-typed
        trace.set_tracer_provider(provider)
        _installed = (provider, watched)
    provider, watched = _installed

    def shutdown() -> None:
        """Export what is left, waiting at most ``OTEL_BSP_EXPORT_TIMEOUT`` ms (default 2 s): then the exporter
        stops retrying, and what it could not send is dropped and said once. The SDK's own flush would wait
        out the exporter's retries (up to ``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by default) per batch."""
        closing = threading.Thread(target=provider.shutdown, name="bae-otel-flush", daemon=True)
        closing.start()
        closing.join(_flush_ms() / 1000)
        if closing.is_alive():
            watched.shutdown()  # ends a wait between retries at once; a request in flight is left behind
            closing.join(0.5)
        if closing.is_alive():
            watched.lost()

    return shutdown


# -- bae serve: continue the caller's trace ---------------------------------------------
def incoming(headers: Any) -> Any | None:
    """The context a served run's spans belong under, to hand to its worker thread: the request's server span
    when the server traces itself (FastAPI does, and it continues ``traceparent``), else the trace of the
    request's W3C ``traceparent`` header; None when tracing is off or there is neither."""
    if tracer() is None:
        return None
    from opentelemetry import context, trace

    if trace.get_current_span().get_span_context().is_valid:
        return context.get_current()
    if headers.get("traceparent") is None:
        return None
    from opentelemetry.propagate import extract

    return extract(headers)


def within(parent: Any | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``parent`` (from ``incoming``) as the current context, so a run in a worker
    thread joins the caller's trace."""
    if parent is None:
        return fn(*args)
    from opentelemetry import context

    token = context.attach(parent)
    try:
        return fn(*args)
    finally:
        context.detach(token)
