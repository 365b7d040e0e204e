"""The HTTP app behind ``bae serve``: the start node's fields in; the final node, the trace and the usage out.

One ``OptimizedLM`` serves every request. A run is blocking code (DSPy's sync path), so
each runs in a worker thread of a pool sized to ``max_concurrency``, behind a semaphore
of the same size: the event loop stays free, requests beyond the limit queue, and the
per-request timeout covers the wait as well as the run.

No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at
runtime, and the request model is built per graph inside ``create_app``.
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
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.errors import PydanticUserError
from pydantic.fields import FieldInfo

from bae import telemetry
from bae.exceptions import BaeError, BaeGraphError, BaeInputError, BaeLMError, BaeParseError
from bae.jsontext import JSONTextError, check_text
from bae.loader import LoadedGraph
from bae.markers import Bind, Context
from bae.node import Node, graph_fingerprint, spec_of
from bae.redaction import redact
from bae.runlog import RunLog
from bae.runner import Backend, BackgroundLog, Outcome, Runner, run_json
from bae.version import __version__

logger = logging.getLogger("bae")


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs graphs: bounded concurrency, a deadline per request, optional bearer auth."""

    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_steps: int = 100
    token: str | None = None


class Step(BaseModel):
    node: str
    fields: dict[str, Any]


class Usage(BaseModel):
    """LM calls of one predictor in this run, by source: compiled (optimized), naive, or stale."""

    node: str
    kind: str
    calls: int
    optimized: int
    naive: int
    stale: int
    errors: int
    mean_latency_s: float
    prompt_tokens: int
    completion_tokens: int


class RunResponse(BaseModel):
    """The node the run ended on, every node it passed through, and its LM usage per predictor."""

    node: str
    result: dict[str, Any]
    trace: list[Step]
    usage: list[Usage]
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


def _timed_out(exc: BaseException) -> bool:
    """Whether an LM failure was a timeout somewhere down its cause chain (504 rather than 502)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if any("Timeout" in cls.__name__ for cls in type(link).__mro__):
            return True
        link = link.__cause__
    return False


def error_status(exc: BaeError) -> int:
    """The HTTP status of a failed run: the LM's fault is a gateway error, the client's a 422, ours a 500."""
    if isinstance(exc, BaeLMError | BaeParseError):
        return 504 if _timed_out(exc) else 502
    if isinstance(exc, BaeInputError) and not isinstance(exc, BaeGraphError):
        return 422
    return 500


class Service:
    """The shared runner and the concurrency it is allowed; one per app."""

    def __init__(self, runner: Runner, settings: ServeSettings) -> None:
        self.runner = runner
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="bae-run")
        self.slots: asyncio.Semaphore | None = None  # made on the server's event loop, at startup
        self.ready = False
        self._numbers = itertools.count(1)

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
            run = self.runner.run
            future = loop.run_in_executor(
                self.pool, telemetry.within, parent, run, next(self._numbers), start, self.settings.max_steps
            )
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(lambda _: slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - loop.time(), 0))
        except TimeoutError:
            raise HTTPException(504, f"run timed out after {self.settings.timeout_s:g}s") from None


def response_of(outcome: Outcome, version: str | None) -> RunResponse:
    """A finished run as the API returns it: ``bae run --json``'s object (``run_json``), typed for OpenAPI."""
    assert outcome.result is not None
    return RunResponse.model_validate(run_json(outcome, version))


def _failure(exc: BaeError) -> HTTPException:
    return HTTPException(error_status(exc), redact(exc.message))


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


def version_info(loaded: LoadedGraph, manifest: dict[str, Any], backend: Backend) -> dict[str, Any]:
    """What ``GET /version`` answers: which compiled version of which graph, on which bae and DSPy."""
    import dspy

    return {
        "version": backend.meta["version"],
        "created_at": manifest.get("created_at"),
        "graph": loaded.reference,
        "start": loaded.graph.start.__name__,
        "graph_fingerprint": graph_fingerprint(loaded.graph.nodes),
        "compiled_fingerprint": manifest.get("graph", {}).get("fingerprint"),
        "stale": sorted(f"{node}.{kind}" for node, kind in backend.stale),
        "scores": manifest.get("scores"),
        "lm": backend.meta["lm"],
        "bae": __version__,
        "dspy": dspy.__version__,
        "python": platform.python_version(),
    }


def create_app(
    loaded: LoadedGraph,
    backend: Backend,
    manifest: dict[str, Any],
    logs: list[RunLog],
    settings: ServeSettings,
) -> FastAPI:
    """The app serving ``loaded`` with ``backend``: every run goes to ``logs`` and to a private log for /stats.

    The private log (a temporary SQLite file, removed at shutdown) holds this process's
    runs only, so ``GET /stats`` is ``bae stats`` computed by the same code, for this server.
    Logs are written by background threads, off the runs' concurrency slots.
    """
    start = loaded.graph.start
    request_model = input_model(start)
    scratch = tempfile.TemporaryDirectory(prefix="bae-serve-")
    own_log = BackgroundLog(RunLog(Path(scratch.name) / "runs.db"))
    sinks = [*(BackgroundLog(log) for log in logs), own_log]
    runner = Runner(loaded, backend.lm, sinks, backend.meta)
    service = Service(runner, settings)
    info = version_info(loaded, manifest, backend)
    version = backend.meta["version"]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.slots = asyncio.Semaphore(settings.max_concurrency)
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            service.pool.shutdown(wait=True)  # runs past their deadline still finish and are logged
            for sink in sinks:
                sink.close()
            scratch.cleanup()

    app = FastAPI(
        title=f"bae: {start.__name__}",
        version=str(version or "naive"),
        description=f"Runs {loaded.reference} ({version or 'naive predictors'}) from {start.__name__}.",
        lifespan=lifespan,
    )
    protected = _auth(settings.token)

    async def run(body: request_model, request: Request) -> RunResponse:  # type: ignore[valid-type]
        data = body.model_dump()  # type: ignore[attr-defined]
        try:
            check_text(data)
        except JSONTextError as exc:
            raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(exc)}]) from None
        try:
            node = start.model_validate(data)
        except ValidationError as exc:  # the node's own validators, beyond the field types
            raise RequestValidationError(exc.errors(include_url=False)) from None
        try:
            outcome = await service.run(node, telemetry.incoming(request.headers))  # continues a traceparent
        except HTTPException:
            raise
        except Exception as exc:  # a bug in user code or in bae: logged here in full, answered in one line
            logger.exception("run failed")
            raise HTTPException(500, f"unexpected {type(exc).__name__} (details in the server log)") from None
        if outcome.error is not None:
            raise _failure(outcome.error)
        return response_of(outcome, version)

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

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: compiled artifacts loaded and verified, accepting runs")
    async def ready() -> dict[str, Any]:
        if not service.ready:
            raise HTTPException(503, "not ready")
        return {"ready": True, "version": version}

    @app.get("/version", dependencies=protected, summary="Compiled version, graph fingerprint, bae and DSPy versions")
    async def version_endpoint() -> dict[str, Any]:
        return info

    @app.get("/stats", dependencies=protected, summary="bae stats for the runs this process served")
    async def stats() -> dict[str, Any]:
        await asyncio.to_thread(own_log.flush)
        figures = await asyncio.to_thread(own_log.log.stats)
        return figures.as_dict()

    return app
