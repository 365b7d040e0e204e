"""OpenTelemetry traces (the ``otel`` extra): the span tree and attributes of runs, and ``--otel`` end to end.

In-process runs export to the SDK's in-memory exporter through the global provider, as a program
that configured OpenTelemetry would; the CLI tests export over OTLP/HTTP to a small receiver
on 127.0.0.1 that decodes what it gets with opentelemetry-proto.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from bae import telemetry
from bae.exceptions import BaeLMError
from bae.loader import load_graph
from bae.optimized_lm import OptimizedLM, create_optimized_lm
from tests import lms
from tests.cli import EXAMPLE, LMS, ROOT, bae_popen, bae_process, wait_for
from tests.test_runtime import TICKET, account_ticket

SECRET = "sk-abcdefghijklmnopqrstuvwx"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The global tracer provider, exporting to memory, for this module only (then unset again)."""
    from opentelemetry.util._once import Once

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def children(finished: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in finished if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def test_span_tree_of_a_run_with_an_optimized_and_a_naive_predictor(
    compiled_partial: Path,
    spans: InMemorySpanExporter,
) -> None:
    loaded = load_graph(EXAMPLE)
    lm = create_optimized_lm(loaded.graph, compiled_partial, model=lms.fewshot())
    ticket = {**account_ticket(), "customer_email": "ana@northwind.io"}
    result = loaded.graph.run(loaded.graph.start(**ticket), lm=lm, **loaded.deps)
    assert result.path == ["Ticket", "Triage", "AccountIssue"]
    finished = spans.get_finished_spans()

    (run,) = by_name(finished, "bae.run")
    assert run.parent is None and run.status.status_code is StatusCode.OK
    assert run.attributes["bae.graph"] == "support_triage:Ticket" and run.attributes["bae.start_node"] == "Ticket"
    assert run.attributes["bae.version"] == "v1" and run.attributes["bae.status"] == "ok"
    assert list(run.attributes["bae.path"]) == ["Ticket", "Triage", "AccountIssue"]

    steps = children(finished, run)
    assert [s.name for s in steps] == ["bae.step Ticket", "bae.step Triage", "bae.step AccountIssue"]
    assert [s.attributes.get("bae.next") for s in steps] == ["Triage", "AccountIssue", None]
    assert all(s.context.trace_id == run.context.trace_id for s in finished)

    calls = children(finished, steps[1])  # Triage's step decides and makes the queue node
    assert [
        (c.attributes["bae.node"], c.attributes["bae.predictor.kind"], c.attributes["bae.source"]) for c in calls
    ] == [
        ("Triage", "choice", "optimized"),
        ("AccountIssue", "make", "naive"),
    ]
    for call, record in zip(calls, result.calls, strict=True):
        assert call.name == "chat bae/scripted" and call.kind is trace.SpanKind.CLIENT
        assert call.attributes["gen_ai.operation.name"] == "chat"
        assert call.attributes["gen_ai.request.model"] == "bae/scripted"
        assert call.attributes["gen_ai.usage.input_tokens"] == record.prompt_tokens
        assert call.attributes["gen_ai.usage.output_tokens"] == record.completion_tokens
        assert call.attributes["bae.version"] == "v1" and call.attributes["bae.attempts"] == 1
        assert steps[1].start_time <= call.start_time <= call.end_time <= steps[1].end_time
        assert "error.type" not in call.attributes
    assert not children(finished, steps[0]) and not children(finished, steps[2])

    # no field values by default: they are customer data
    exported = json.dumps([dict(s.attributes) for s in finished])
    assert "ana@northwind.io" not in exported and ticket["text"][:30] not in exported


@pytest.fixture
def content() -> Iterator[None]:
    """Field values on the spans of runs from now on (``--otel-content``), off again after the test."""
    telemetry.record_content(True)
    try:
        yield
    finally:
        telemetry.record_content(False)


def test_content_is_opt_in_and_redacted(spans: InMemorySpanExporter, content: None) -> None:
    loaded = load_graph(EXAMPLE)
    ticket = {**TICKET, "text": TICKET["text"] + f" My key is {SECRET}"}
    loaded.graph.run(loaded.graph.start(**ticket), lm=OptimizedLM(model=lms.oracle()), **loaded.deps)
    (run,) = by_name(spans.get_finished_spans(), "bae.run")
    assert "INV-20931" in run.attributes["bae.input"] and "ana@northwind.io" in run.attributes["bae.input"]
    assert SECRET not in run.attributes["bae.input"] and "[redacted]" in run.attributes["bae.input"]
    assert json.loads(run.attributes["bae.output"])["priority"]


def test_a_failing_lm_call_is_an_error_on_its_span_its_step_and_the_run(spans: InMemorySpanExporter) -> None:
    loaded = load_graph(EXAMPLE)
    scripted = lms.oracle()
    scripted.faults["Triage.choice"] = [ValueError("the model exploded")]
    with pytest.raises(BaeLMError):
        loaded.graph.run(loaded.graph.start(**TICKET), lm=OptimizedLM(model=scripted), **loaded.deps)
    finished = spans.get_finished_spans()
    (run,) = by_name(finished, "bae.run")
    assert run.status.status_code is StatusCode.ERROR and "the model exploded" in run.status.description
    assert run.attributes["bae.status"] == "error" and run.attributes["error.type"] == "BaeLMError"
    assert list(run.attributes["bae.path"]) == ["Ticket", "Triage"]
    step = children(finished, run)[-1]
    assert step.name == "bae.step Triage" and step.status.status_code is StatusCode.ERROR
    assert [e.name for e in step.events] == ["exception"]
    (call,) = children(finished, step)
    assert call.status.status_code is StatusCode.ERROR and call.attributes["error.type"] == "BaeLMError"
    assert call.attributes["bae.predictor.kind"] == "choice" and "gen_ai.usage.input_tokens" not in call.attributes


def test_concurrent_runs_keep_their_spans_apart(spans: InMemorySpanExporter, content: None) -> None:
    """(Field values on the spans tell the runs apart by their input.)"""
    loaded = load_graph(EXAMPLE)
    lm = OptimizedLM(model=lms.slow())  # 10 ms a call: the runs overlap
    tickets = [trace[0]["fields"] for trace in lms.TRACES[:12]]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda t: loaded.graph.run(loaded.graph.start(**t), lm=lm, **loaded.deps), tickets))
    finished = spans.get_finished_spans()
    runs = by_name(finished, "bae.run")
    assert len(runs) == len(tickets) and len({r.context.trace_id for r in runs}) == len(tickets)
    for run in runs:
        ticket = json.loads(run.attributes["bae.input"])
        result = results[tickets.index({k: ticket[k] for k in tickets[0]})]
        in_trace = [s for s in finished if s.context.trace_id == run.context.trace_id]
        steps = children(finished, run)
        calls = [c for s in steps for c in children(finished, s)]
        assert len(in_trace) == 1 + len(steps) + len(calls)
        assert [s.attributes["bae.node"] for s in steps] == result.path
        assert [(c.attributes["bae.node"], c.attributes["bae.predictor.kind"]) for c in calls] == [
            (c.node, c.kind) for c in result.calls
        ]


def test_without_a_configured_provider_nothing_is_imported_or_traced() -> None:
    script = (
        "import sys; from bae.loader import load_graph; from tests import lms; from tests.test_runtime import TICKET\n"
        f"loaded = load_graph({EXAMPLE!r})\n"
        "from bae.optimized_lm import OptimizedLM\n"
        "loaded.graph.run(loaded.graph.start(**TICKET), lm=OptimizedLM(model=lms.oracle()), **loaded.deps)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- --otel: the CLI exporting over OTLP/HTTP ----------------------------------------------
class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1: keeps every span it is sent, with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        received.extend((attributes.get("service.name", ""), span) for span in scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def env(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_SERVICE_NAME": "bae-test", "BAE_OTEL": ""}

    def names(self) -> list[str]:
        return [span.name for _, span in self.spans]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_bae_run_otel_exports_its_spans_over_otlp_http(receiver: Receiver, tmp_path: Path) -> None:
    """A real process: ``--otel`` installs the process's one global provider, flushed as the command ends
    (``$BAE_OTEL_CONTENT``, read by the CLI, puts the field values on the spans)."""
    done = bae_process("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--no-log", "--input", json.dumps(TICKET), "--otel",
                       env={**receiver.env(), "BAE_OTEL_CONTENT": "1"}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(receiver.names()) == sorted(
        [
            "bae.run",
            "bae.step Ticket",
            "bae.step Triage",
            "bae.step BillingIssue",
            "chat bae/scripted",
            "chat bae/scripted",
        ]
    )
    assert {service for service, _ in receiver.spans} == {"bae-test"}
    run = next(span for _, span in receiver.spans if span.name == "bae.run")
    attributes = {a.key: a.value for a in run.attributes}
    assert attributes["bae.status"].string_value == "ok"
    assert [v.string_value for v in attributes["bae.path"].array_value.values] == ["Ticket", "Triage", "BillingIssue"]
    assert json.loads(attributes["bae.input"].string_value) == TICKET
    assert len({span.trace_id for _, span in receiver.spans}) == 1


def test_otel_without_the_extra_is_one_line_and_exit_2(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "opentelemetry"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('not installed', name='opentelemetry')\n")
    done = bae_process("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--no-log", "--input", json.dumps(TICKET),
                       env={"PYTHONPATH": f"{shim.parent}:{ROOT}", "BAE_OTEL": "1"}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "bae: error: --otel needs the otel extra: pip install 'bae[otel]' (opentelemetry missing)"
    ]


@contextlib.contextmanager
def unreachable_collector(kind: str) -> Iterator[str]:
    """The URL of a collector that is away: nothing listens ("refused"), or it takes the connection and never
    answers ("silent": each export request then waits out OTEL_EXPORTER_OTLP_TIMEOUT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if kind == "silent":
            sock.listen(8)
            yield f"http://127.0.0.1:{port}"
            return
    yield f"http://127.0.0.1:{port}"  # closed again: connections are refused


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_unreachable_collector_is_one_warning_and_a_bounded_wait_at_exit(tmp_path: Path, kind: str) -> None:
    """Without a bound the exit would wait out the exporter's retries, here 60 s a request (the silent
    collector), past this test's 45 s timeout; the exporter's own line per retry stays in the debug log."""
    with unreachable_collector(kind) as url:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_TIMEOUT": "60", "BAE_OTEL": ""}
        done = bae_process("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--no-log", "--input", json.dumps(TICKET),
                           "--otel", env=env, cwd=tmp_path, timeout=45)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("BillingIssue ")  # the run itself is untouched
    assert [line for line in done.stderr.splitlines() if "no --compiled" not in line] == [
        "warning: OpenTelemetry: spans not exported, the collector did not take them: check "
        "OTEL_EXPORTER_OTLP_ENDPOINT and that the collector runs (--debug shows each attempt)"
    ], done.stderr


def test_bae_serve_continues_an_incoming_traceparent(receiver: Receiver, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from tests.test_serve import BILLING, COMPILED, run, start_server, stop

    server = start_server("--compiled", str(COMPILED), "--no-log", "--otel", out=tmp_path / "log", env=receiver.env())
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        response = run(server, BILLING, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        assert response.status_code == 200, response.text
    finally:
        assert stop(server) in (0, -signal.SIGTERM), server.log()  # the spans are flushed on the way out
    (span,) = [span for _, span in receiver.spans if span.name == "bae.run"]
    assert span.trace_id.hex() == trace_id
    parents = {s.span_id: s.parent_span_id for _, s in receiver.spans}
    ancestor = span.parent_span_id
    while ancestor in parents:  # under the server's own request span, if it traces itself (FastAPI does)
        ancestor = parents[ancestor]
    assert ancestor.hex() == parent_id
    ours = [s for _, s in receiver.spans if s.name.startswith(("bae.", "chat "))]  # FastAPI traces itself too
    assert len(ours) == 6 and {s.trace_id.hex() for s in ours} == {trace_id}


def test_sigterm_mid_batch_still_flushes_the_finished_runs_spans(receiver: Receiver, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(t[0]["fields"]) + "\n" for t in lms.TRACES * 40))  # minutes of 10 ms calls
    output = tmp_path / "out.jsonl"
    process = bae_popen("run", EXAMPLE, "--lm", f"{LMS}:slow", "--no-log", "--otel", "--batch", str(batch),
                        "--output", str(output), "--concurrency", "1", cwd=tmp_path, env=receiver.env())  # fmt: skip
    try:
        # started, and some runs finished (their spans wait in the batch processor): an event, not a sleep
        wait_for(lambda: output.exists() and len(output.read_text().splitlines()) >= 3, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    runs = [span for _, span in receiver.spans if span.name == "bae.run"]
    assert runs, stderr
