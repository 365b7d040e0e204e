"""The HTTP app behind ``bae serve``: the start node's fields in; the final node, the trace and the usage out.

One ``OptimizedLM`` serves every request. A run is blocking code (DSPy's sync path), so
each runs in a worker thread of a pool sized to ``max_concurrency``, behind a semaphore
of the same size: the event loop stays free, requests beyond the limit queue, and the
per-request timeout covers the wait as well as the run.

No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at
runtime, and the request model is built per graph inside ``create_app``, whose ``POST /run`` is
the one handler made there; the others read the app's ``Service`` from its state.
"""

import asyncio
import contextlib
import hmac
import itertools
import logging
import platform
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_serializer
from pydantic.errors import PydanticUserError
from pydantic.fields import FieldInfo

from bae import telemetry
from bae.exceptions import BaeError, BaeGraphError, BaeInputError, BaeLMError, BaeParseError
from bae.jsontext import JSONTextError, check_text
from bae.markers import Bind, Context
from bae.node import Node, graph_fingerprint, spec_of
from bae.observe import Observer
from bae.recording import Recorder, RecordingObserver
from bae.redaction import redact
from bae.runlog import BackgroundLog, RunLog, RunLogObserver
from bae.runner import Outcome, Runner, Runtime, run_json
from bae.usage import UsageJSON
from bae.version import __version__

logger = logging.getLogger("bae")


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs graphs: bounded concurrency, a deadline per request, optional bearer auth."""

    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_steps: int = 100
    token: str | None = None


class StepCall(BaseModel):
    """A call that made a step: its predictor, the version it came from, and the model's confidence."""

    predictor: str
    version: str
    source: str
    confidence: float | None


class Step(BaseModel):
    """One node of the trace; a step an LM made lists the calls that made it (``lm``)."""

    node: str
    fields: dict[str, Any]
    lm: list[StepCall] | None = None

    @model_serializer(mode="wrap")
    def _without_empty_lm(self, handler: Any) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if dumped.get("lm") is None:  # a step made by code or given as input: as bae run --json shows it
            dumped.pop("lm", None)
        return dumped


class RunResponse(BaseModel):
    """The node the run ended on, every node it passed through, and its LM usage per predictor."""

    node: str
    result: dict[str, Any]
    trace: list[Step]
    usage: list[UsageJSON]
    version: str | None
    duration_s: float


def input_model(start: type[Node]) -> type[BaseModel]:
    """A request model of the start node's data fields, so the OpenAPI schema shows exactly them.

    ``Bind`` fields are services set by code, not data a client sends: a start node that
    requires one cannot be served. Unknown fields are refused, so a typo is a 422, not a
    silently ignored input.
    """
    spec = spec_of(start)
    required_binds = [f.name for f in spec.bound if f.required]
    if required_binds:
        raise BaeGraphError(
            f"{start.__name__} requires Bind field{'s' * (len(required_binds) > 1)} {', '.join(required_binds)}: "
            "services cannot come over HTTP"
        )
    visible = {f.name: f for f in spec.visible}
    fields: dict[str, Any] = {}
    for name, info in start.model_fields.items():
        if name in visible:
            field = FieldInfo.merge_field_infos(info, description=visible[name].description or None)
            field.metadata = [m for m in field.metadata if not isinstance(m, Context | Bind)]
            fields[name] = (info.annotation, field)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: type[BaseModel] = create_model(f"{start.__name__}Input", __config__=config, __doc__=start.__doc__, **fields)
    try:
        model.model_json_schema()
    except PydanticUserError as exc:
        reason = str(exc).splitlines()[0]
        raise BaeGraphError(f"{start.__name__} has a field with no JSON form (cannot be served): {reason}") from exc
    return model


def error_status(exc: BaeError) -> int:
    """The HTTP status of a failed run: the LM's fault is a gateway error, the client's a 422, ours a 500."""
    if isinstance(exc, BaeLMError | BaeParseError):
        return 504 if getattr(exc, "timed_out", False) else 502
    if isinstance(exc, BaeInputError) and not isinstance(exc, BaeGraphError):
        return 422
    return 500


class Service:
    """What one app serves with: the runtime, the concurrency it is allowed, its runs' logs and readiness.

    Every run goes to the run logs given and to a private log for ``/stats`` (a temporary SQLite file,
    removed at shutdown), so ``GET /stats`` is ``bae stats`` computed by the same code, for this server.
    Logs are written by background threads, off the runs' concurrency slots. With a ``recorder``
    (``--record``) every successful run's trace is appended to its file as the run ends.
    """

    def __init__(
        self, runtime: Runtime, logs: list[RunLog], settings: ServeSettings, recorder: Recorder | None = None
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.scratch = tempfile.TemporaryDirectory(prefix="bae-serve-")
        self.own_log = BackgroundLog(RunLog(Path(self.scratch.name) / "runs.db"))
        self.sinks = [*(BackgroundLog(log) for log in logs), self.own_log]
        observers: list[Observer] = [RunLogObserver(sink, runtime.source) for sink in self.sinks]
        if recorder is not None:
            observers.append(RecordingObserver(recorder, runtime.source.version))
        self.runner = Runner(runtime, observers, settings.max_steps)
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="bae-run")
        self.slots: asyncio.Semaphore | None = None  # made on the server's event loop, at startup
        self.ready = False
        self.info = version_info(runtime)
        self._numbers = itertools.count(1)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        self.slots = asyncio.Semaphore(self.settings.max_concurrency)
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            self.pool.shutdown(wait=True)  # runs past their deadline still finish and are logged
            for sink in self.sinks:
                sink.close()
            self.scratch.cleanup()

    async def run(self, start: Node, parent: Any = None) -> Outcome:
        """Run one input within the deadline; the slot is held until the run's thread finishes.

        A run that outlives its deadline cannot be killed (it is a thread in blocking I/O):
        the client gets a 504 at once, and the run still ends, frees its slot and is logged.
        """
        slots = self.slots
        assert slots is not None, "Service.run before startup"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        try:
            await asyncio.wait_for(slots.acquire(), self.settings.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"timed out after {self.settings.timeout_s:g}s waiting for a free slot") from None
        try:
            future = loop.run_in_executor(
                self.pool, telemetry.within, parent, self.runner.run, next(self._numbers), start
            )
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(lambda _: slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - loop.time(), 0))
        except TimeoutError:
            raise HTTPException(504, f"run timed out after {self.settings.timeout_s:g}s") from None

    async def answer(self, data: dict[str, Any], headers: Any) -> RunResponse:
        """``POST /run``: the start node from the request's fields, run, answered as ``bae run --json`` prints it."""
        try:
            check_text(data)
        except JSONTextError as exc:
            raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(exc)}]) from None
        try:
            node = self.runtime.graph.graph.start.model_validate(data)
        except ValidationError as exc:  # the node's own validators, beyond the field types
            raise RequestValidationError(exc.errors(include_url=False)) from None
        try:
            outcome = await self.run(node, telemetry.incoming(headers))  # continues a traceparent
        except HTTPException:
            raise
        except Exception as exc:  # a bug in user code or in bae: logged here in full, answered in one line
            logger.exception("run failed")
            raise HTTPException(500, f"unexpected {type(exc).__name__} (details in the server log)") from None
        if outcome.error is not None:
            raise HTTPException(error_status(outcome.error), redact(outcome.error.message))
        return RunResponse.model_validate(run_json(outcome, self.runtime.source.version))

    async def stats(self) -> dict[str, Any]:
        """``GET /stats``: ``bae stats`` over the runs this process served."""
        await asyncio.to_thread(self.own_log.flush)
        figures = await asyncio.to_thread(self.own_log.log.stats)
        return figures.as_dict()


def _auth(token: str | None) -> list[Any]:
    """Route dependencies checking ``Authorization: Bearer <token>`` in constant time (none without a token)."""
    if not token:
        return []
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False)

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(check)]


def version_info(runtime: Runtime) -> dict[str, Any]:
    """What ``GET /version`` answers: which compiled version of which graph, on which bae and DSPy."""
    import dspy

    graph, manifest = runtime.graph, runtime.version.manifest
    return {
        "version": runtime.source.version,
        "created_at": manifest.get("created_at"),
        "graph": graph.reference,
        "start": graph.graph.start.__name__,
        "graph_fingerprint": graph_fingerprint(graph.graph.nodes),
        "compiled_fingerprint": manifest.get("graph", {}).get("fingerprint"),
        "stale": sorted(f"{node}.{kind}" for node, kind in runtime.version.stale),
        "scores": manifest.get("scores"),
        "lm": runtime.source.lm,
        "bae": __version__,
        "dspy": dspy.__version__,
        "python": platform.python_version(),
    }


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def health() -> dict[str, str]:
    return {"status": "ok"}


async def ready(request: Request) -> dict[str, Any]:
    if not _service(request).ready:
        raise HTTPException(503, "not ready")
    return {"ready": True, "version": _service(request).runtime.source.version}


async def version_endpoint(request: Request) -> dict[str, Any]:
    return _service(request).info


async def stats(request: Request) -> dict[str, Any]:
    return await _service(request).stats()


def create_app(
    runtime: Runtime, logs: list[RunLog], settings: ServeSettings, recorder: Recorder | None = None
) -> FastAPI:
    """The app serving ``runtime``: ``POST /run`` (its request model built from the start node),
    ``/health``, ``/ready``, ``/version`` and ``/stats``; every route but the first two behind the token.
    ``recorder`` records each successful run (``bae serve --record``)."""
    service = Service(runtime, logs, settings, recorder)
    start, version = runtime.graph.graph.start, runtime.source.version
    request_model = input_model(start)
    app = FastAPI(
        title=f"bae: {start.__name__}",
        version=str(version or "naive"),
        description=f"Runs {runtime.graph.reference} ({version or 'naive predictors'}) from {start.__name__}.",
        lifespan=service.lifespan,
    )
    app.state.service = service
    protected = _auth(settings.token)

    async def run(body: request_model, request: Request) -> RunResponse:  # type: ignore[valid-type]
        return await service.answer(body.model_dump(), request.headers)  # type: ignore[attr-defined]

    app.post(
        "/run",
        response_model=RunResponse,
        dependencies=protected,
        summary=f"Run the graph from {start.__name__}",
        responses={
            **({401: {"description": "Missing or wrong bearer token"}} if protected else {}),
            502: {"description": "The LM failed or kept answering unparseably"},
            504: {"description": "The run or the LM timed out"},
        },
    )(run)
    app.get("/health", summary="Liveness: the process answers")(health)
    app.get("/ready", summary="Readiness: compiled artifacts loaded and verified, accepting runs")(ready)
    app.get("/version", dependencies=protected, summary="Compiled version, graph fingerprint, bae and DSPy versions")(
        version_endpoint
    )
    app.get("/stats", dependencies=protected, summary="bae stats for the runs this process served")(stats)
    return app
