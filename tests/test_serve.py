"""``bae serve``: the real server on a free loopback port, called over HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from dspy.utils.exceptions import LMServerError, LMTimeoutError  # noqa: E402

from bae import Bind, Graph, Node  # noqa: E402
from bae.dspy_backend import DSPyBackend  # noqa: E402
from bae.exceptions import BaeGraphError, BaeInputError, BaeLMError, BaeParseError  # noqa: E402
from bae.predictors import PredictorCall  # noqa: E402
from bae.runlog import LoggedRun, RunLog  # noqa: E402
from bae.serving import error_status, input_model  # noqa: E402
from bae.testing import ScriptedLM  # noqa: E402
from bench.serve import wait_until_up  # noqa: E402
from tests import graphs as g  # noqa: E402
from tests import lms  # noqa: E402
from tests.cli import EXAMPLE, ROOT, bae, environment, wait_for  # noqa: E402

COMPILED = ROOT / "compiled"
HERE = Path(__file__).resolve()
CALL_DELAY_S = 0.2  # per LM call; a run of the example makes two
BILLING = lms.TRACES[0][0]["fields"]  # a gold ticket of the example dataset: the oracle routes it to BillingIssue


PEAK = "in_flight.max"  # in the server's working directory: the most LM calls it has had in flight at once


def serving_lm() -> ScriptedLM:
    """Gold answers after CALL_DELAY_S per call; 'EXPLODE' in a ticket breaks the LM, 'STALL' hangs it until
    ``stall.release`` exists in the server's working directory (it creates ``stall.mark`` there first, so a
    test knows the run is under way). Every answer writes the peak of calls in flight to ``PEAK``."""
    lm = lms.triage_lm(delay_s=CALL_DELAY_S)
    gold_choice = lm.script["Triage.choice"]
    lock = threading.Lock()

    def choose(call: PredictorCall) -> Any:
        text = call.inputs.get("text", "")
        if "EXPLODE" in text:
            raise ValueError("the model exploded")
        if "STALL" in text:
            Path("stall.mark").touch()
            deadline = time.monotonic() + 60  # a safety net only: the test releases it
            while not Path("stall.release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return gold_choice(call)  # type: ignore[operator]

    def noting_peak(answer: Callable[[PredictorCall], Any]) -> Callable[[PredictorCall], Any]:
        def answered(call: PredictorCall) -> Any:
            with lock:  # each answer writes after its own call began, so the last write holds the true peak
                Path(PEAK).write_text(str(lm.max_in_flight))
            return answer(call)

        return answered

    lm.script = {key: noting_peak(answer) for key, answer in {**lm.script, "Triage.choice": choose}.items()}  # type: ignore[arg-type]
    return lm


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def start_server(*args: str, out: Path, env: dict[str, str] | None = None) -> Server:
    """``bae serve`` on port 0 in a subprocess; returns once /ready answers."""
    handle = open(out, "wb")  # noqa: SIM115  (the server writes here until it stops)
    command = [sys.executable, "-m", "bae_cli", "serve", "--port", "0", "--lm", f"{HERE}:serving_lm", *args]
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment(env), cwd=out.parent)
    handle.close()
    return Server(wait_until_up(process, out), process, out)


def stop(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """No token, four runs at a time, its own run log."""
    where = tmp_path_factory.mktemp("open")
    db = where / "runs.db"
    server = start_server("--compiled", str(COMPILED), "--max-concurrency", "4", "--log-db", str(db), out=where / "log")
    yield server, db
    stop(server)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A bearer token from $BAE_TOKEN and a 3 s deadline per request (a real run on a busy 2-core machine
    may take over 1 s; the stalled run of the deadline test is held until released)."""
    where = tmp_path_factory.mktemp("guarded")
    args = ("--compiled", str(COMPILED), "--timeout", "3", "--max-concurrency", "2", "--no-log")
    server = start_server(*args, out=where / "log", env={"BAE_TOKEN": "s3cret-token"})
    yield server
    stop(server)


def run(server: Server, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + "/run", json=body, timeout=30, **kwargs)


def logged(db: Path, wanted: Callable[[LoggedRun], bool]) -> LoggedRun:
    """The newest run in the log that ``wanted`` accepts: the server writes its log in the background."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in RunLog(db).runs() if wanted(r)] if db.exists() else []
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no such run in {db}")


def served(server: Server) -> int:
    """Runs this server has finished, from /stats (which waits for its log to catch up)."""
    return sum(v["runs"] for v in httpx.get(server.url + "/stats").json()["versions"])


def test_run_returns_the_final_node_trace_and_usage(open_server: tuple[Server, Path]) -> None:
    server, db = open_server
    response = run(server, BILLING)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["node"] == "BillingIssue" and body["version"] == "v1"
    assert [step["node"] for step in body["trace"]] == ["Ticket", "Triage", "BillingIssue"]
    assert body["trace"][0]["fields"] == BILLING
    assert body["result"]["plan"] == "enterprise" and body["result"]["refund_requested"] is True
    usage = {(u["node"], u["kind"]): (u["optimized"], u["naive"]) for u in body["usage"]}
    assert usage == {("Triage", "choice"): (1, 0), ("BillingIssue", "make"): (1, 0)}
    run_ok = logged(db, lambda r: r.status == "ok")
    assert run_ok.version == "v1" and [c.node for c in run_ok.calls] == ["Triage", "BillingIssue"]


def test_run_answers_what_bae_run_json_prints(open_server: tuple[Server, Path], tmp_path: Path) -> None:
    """The README: ``POST /run`` "returns what ``bae run --json`` prints": one object, built in one place."""
    served_run = run(open_server[0], BILLING).json()
    printed = bae("run", "--compiled", str(COMPILED), "--lm", f"{HERE}:serving_lm", "--no-log", "--input",
                  json.dumps(BILLING), "--json", cwd=tmp_path)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    cli_run = json.loads(printed.stdout)
    assert list(cli_run) == list(served_run) == ["node", "result", "trace", "usage", "version", "duration_s"]
    timing = ("mean_latency_s",)
    for ran in (served_run, cli_run):
        assert ran["duration_s"] >= 2 * CALL_DELAY_S
        ran["usage"] = [{k: v for k, v in row.items() if k not in timing} for row in ran.pop("usage")]
        ran.pop("duration_s")
    assert cli_run == served_run


def test_openapi_request_schema_is_the_start_nodes_fields(open_server: tuple[Server, Path]) -> None:
    schema = httpx.get(open_server[0].url + "/openapi.json").json()
    request = schema["paths"]["/run"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    model = schema["components"]["schemas"][request["$ref"].rsplit("/", 1)[1]]
    assert set(model["properties"]) == {"customer_email", "text"}
    assert sorted(model["required"]) == ["customer_email", "text"] and model["additionalProperties"] is False


def test_bad_input_is_422_naming_each_field_and_runs_nothing(open_server: tuple[Server, Path]) -> None:
    server, _ = open_server
    before = served(server)
    response = run(server, {"customer_email": 5, "txt": "typo"})
    assert response.status_code == 422
    problems = {(tuple(e["loc"]), e["type"]) for e in response.json()["detail"]}
    assert problems == {
        (("body", "customer_email"), "string_type"),
        (("body", "text"), "missing"),
        (("body", "txt"), "extra_forbidden"),
    }
    garbage = httpx.post(server.url + "/run", content=b"{not json", headers={"content-type": "application/json"})
    assert garbage.status_code == 422 and "Traceback" not in garbage.text
    surrogate = httpx.post(
        server.url + "/run",
        content=b'{"customer_email": "a@b.c", "text": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 422 and "lone UTF-16 surrogate" in surrogate.text
    assert served(server) == before


def test_concurrent_requests_share_the_lm_within_the_limit(open_server: tuple[Server, Path]) -> None:
    """Eight runs of two 0.2 s calls sent at once, --max-concurrency 4: the LM (which counts the calls it is
    answering at the same time) never has more than four in flight, and more than one: runs share it."""
    server, _ = open_server

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/run", json=BILLING) for _ in range(8)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.json()["node"] == "BillingIssue" for r in responses)
    peak = int((server.output.parent / PEAK).read_text())
    assert 1 < peak <= 4, peak


def test_failing_lm_is_502_with_one_short_line(open_server: tuple[Server, Path]) -> None:
    server, db = open_server
    response = run(server, {**BILLING, "text": "EXPLODE please"})
    assert response.status_code == 502
    detail = response.json()["detail"]
    assert "Triage (choice)" in detail and "the model exploded" in detail and "Traceback" not in response.text
    assert logged(db, lambda r: r.status == "error").error == detail
    assert run(server, BILLING).status_code == 200  # the server carries on


def test_health_ready_version_and_stats(open_server: tuple[Server, Path]) -> None:
    server, _ = open_server
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json() == {"ready": True, "version": "v1"}
    manifest = json.loads((COMPILED / "v1" / "manifest.json").read_text())
    version = httpx.get(server.url + "/version").json()
    assert version["version"] == "v1" and version["stale"] == []
    assert version["graph_fingerprint"] == version["compiled_fingerprint"] == manifest["graph"]["fingerprint"]
    assert version["bae"] and version["dspy"] == manifest["dspy_version"]

    def figures() -> tuple[int, int]:
        stats = httpx.get(server.url + "/stats").json()
        runs = sum(v["runs"] for v in stats["versions"])
        return runs, sum(n["calls"] for n in stats["nodes"])

    runs, calls = figures()
    assert run(server, BILLING).status_code == 200
    assert figures() == (runs + 1, calls + 2)


def test_token_guards_everything_but_liveness_and_readiness(guarded: Server) -> None:
    for token in (None, "wrong-token"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = run(guarded, BILLING, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        for path in ("/version", "/stats"):
            assert httpx.get(guarded.url + path, headers=headers).status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/ready").status_code == 200
    good = {"Authorization": "Bearer s3cret-token"}
    assert run(guarded, BILLING, headers=good).json()["node"] == "BillingIssue"
    assert httpx.get(guarded.url + "/stats", headers=good).status_code == 200


def test_a_run_past_its_deadline_is_504(guarded: Server) -> None:
    good = {"Authorization": "Bearer s3cret-token"}
    here = guarded.output.parent
    try:
        began = time.perf_counter()
        response = run(guarded, {**BILLING, "text": "STALL here"}, headers=good)
        assert response.status_code == 504 and "timed out after 3s" in response.json()["detail"]
        assert time.perf_counter() - began >= 3.0  # not before the deadline
        # answered at the deadline, not when the stalled run ended: the model only lets go after this line
        assert (here / "stall.mark").exists() and not (here / "stall.release").exists()
    finally:
        (here / "stall.release").touch()


def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    server = start_server("--compiled", str(COMPILED), "--no-log", out=tmp_path / "log")
    answers: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answers.append(run(server, {**BILLING, "text": "STALL, then answer"})))
    request.start()
    wait_for((tmp_path / "stall.mark").exists, server.process)  # the run is in its first LM call, held there
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down" in server.log(), server.process)  # the server is stopping, the run still held
    (tmp_path / "stall.release").touch()  # only now does the model answer
    request.join(timeout=30)
    assert answers and answers[0].status_code == 200, server.log()
    assert stop(server) in (0, -signal.SIGTERM)
    assert "Finished server process" in server.log()


def test_a_tampered_version_is_refused_before_listening(tmp_path: Path) -> None:
    compiled = tmp_path / "compiled"
    shutil.copytree(COMPILED, compiled)
    node_file = compiled / "v1" / "nodes" / "BillingIssue.json"
    node_file.write_text(node_file.read_text().replace("refund", "REFUND", 1))
    result = bae("serve", EXAMPLE, "--compiled", str(compiled), "--port", "0", "--lm", f"{HERE}:serving_lm")
    assert result.returncode == 3
    assert result.stderr.startswith("bae: error: ") and "checksum mismatch" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_one_line_exit_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = bae("serve", "--compiled", str(COMPILED), "--port", port, "--lm", f"{HERE}:serving_lm", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"bae: error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BaeLMError("Triage (choice): LM still failing", cause=TimeoutError("read timed out"), timed_out=True), 504),
        (BaeLMError("Triage (choice): LM call failed", cause=ValueError("bad request")), 502),
        (BaeParseError("BillingIssue (make): did not parse"), 502),
        (BaeInputError("bad field"), 422),
        (BaeGraphError("cannot fill Context field"), 500),
    ],
)
def test_errors_map_to_http_statuses(error: Exception, status: int) -> None:
    assert error_status(error) == status  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (lambda: TimeoutError("read timed out"), 504),
        (lambda: LMTimeoutError("timed out"), 504),
        (lambda: LMServerError("overloaded", status=503), 502),
        (lambda: PermissionError("bad key"), 502),
    ],
    ids=["timeout", "dspy-timeout", "unavailable", "refused"],
)
def test_a_failed_lm_call_is_answered_as_the_run_log_records_it(fault: Callable[[], Exception], status: int) -> None:
    """One rule decides what a timeout is: the call the backend records as cut by the timeout is the failure
    the server answers 504, and any other failure of the LM is a 502."""
    lm = ScriptedLM(make={"Classify": {"topic": "math"}}, faults={"Classify": [fault() for _ in range(10)]})
    with pytest.raises(BaeLMError) as info:
        Graph(start=g.Request).run(g.Request(email="a@b.c", question="6*7?"), lm=DSPyBackend(lm, backoff_s=0.0))
    assert info.value.result is not None
    [call] = info.value.result.calls
    assert error_status(info.value) == status and (call.cut == "timeout") == (status == 504)


class Service:
    pass


def test_a_start_node_needing_a_service_cannot_be_served() -> None:
    class NeedsService(Node):
        question: str
        service: Annotated[Service, Bind()]

    with pytest.raises(BaeGraphError, match="NeedsService requires Bind field"):
        input_model(NeedsService)

    class TakesService(Node):
        question: str
        service: Service

    with pytest.raises(BaeGraphError, match="no JSON form"):
        input_model(TakesService)


class Crash(Node):
    """Custom logic with a bug in it."""

    question: str

    def __call__(self, lm: Any) -> None:
        raise RuntimeError("bug in user code")


def test_a_crashing_run_is_logged_as_an_error_then_raised(tmp_path: Path) -> None:
    """What a 500 from /run leaves behind: the run log says error, not ok."""
    from bae.loader import LoadedGraph
    from bae.optimized_lm import LoadedVersion
    from bae.runlog import RunLogObserver
    from bae.runner import Runner, start_runtime

    log = RunLog(tmp_path / "runs.db")
    runtime = start_runtime(LoadedVersion(LoadedGraph(Graph(Crash), "crash")), ScriptedLM())
    runner = Runner(runtime, [RunLogObserver(log, runtime.source)], max_steps=5)
    with pytest.raises(RuntimeError, match="bug in user code"):
        runner.run(1, Crash(question="q"))
    (logged,) = log.runs()
    assert logged.status == "error" and logged.error == "unexpected RuntimeError: bug in user code"
