"""bae against a real OpenAI-compatible server: llama-cpp-python's, serving the embedded model.

The server is started the way the README says (``python -m bae.local.server``: llama_cpp.server under
bae's AMX guard), and bae talks to it as to any hosted model: ``--lm openai/gemma`` through LiteLLM,
the endpoint in ``OPENAI_API_BASE``. llama-cpp-python's server refuses OpenAI's ``json_schema``
response format (400) and LiteLLM does not know the alias supports one, so DSPy sends none and the
270M model answers in free text; ``BAE_RESPONSE_FORMAT=json_object_schema`` (``--response-format``, read by
the CLI) sends each answer's schema in the form this server turns into a grammar.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import EXAMPLE, TRAIN, bae, bae_popen, environment
from tests.test_local_lm import REPACKED

pytestmark = pytest.mark.local
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python's server extra (pip install -e '.[local]')")

TICKETS = [
    {"customer_email": "ana@northwind.io", "text": "I was charged twice for invoice INV-2231, please refund."},
    {"customer_email": "bo@acme.dev", "text": "The API returns 502 on every request since this morning."},
    {"customer_email": "cy@globex.com", "text": "Please change the email address on my account."},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], str, Any]:
    """The server on a free port, once it lists its model; (process, API base, its output)."""
    port = _free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the server; not a pipe: llama.cpp's start-up output would fill it and block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "bae.local.server", "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "4096", "--model_alias", "gemma"],
        stdout=log, stderr=subprocess.STDOUT, env=environment(),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, _tail(log)
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as response:
                if json.load(response)["data"][0]["id"] == "gemma":
                    return proc, base, log
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the llama.cpp server did not start in 120 s: {_tail(log)}"
        time.sleep(0.2)


def _text(log: Any) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace"))


def _tail(log: Any) -> str:
    return _text(log)[-2000:]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def started() -> Iterator[tuple[str, Any]]:
    """(API base, the server's output) of one server for the module."""
    proc, base, log = start_server()
    try:
        yield base, log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(started: tuple[str, Any]) -> dict[str, str]:
    return lm_env(started[0])


def lm_env(base: str) -> dict[str, str]:
    return {"OPENAI_API_BASE": base, "OPENAI_API_KEY": "none", "BAE_RESPONSE_FORMAT": "json_object_schema",
            "BAE_LM_TIMEOUT": "120"}  # fmt: skip


def test_the_server_loads_without_repacked_weights(started: tuple[str, Any]) -> None:
    """The launcher's point (AMX CPUs crash on repacked weights): llama.cpp's load log, which the server
    prints, shows no repacked or AMX buffer. ``python -m llama_cpp.server`` itself repacks on any x86 CPU
    with AVX2, so this holds only under bae's guard, on any machine."""
    output = _text(started[1])
    assert "load_tensors" in output  # the load log reached us, so its silence below means something
    repacked = [line for line in output.splitlines() if REPACKED.search(line)]
    assert not repacked, repacked[:3]


def test_run_and_batch_parse_and_log_tokens(server: dict[str, str], tmp_path: Path) -> None:
    db, batch = tmp_path / "runs.db", tmp_path / "in.jsonl"
    one = bae("run", EXAMPLE, "--lm", "openai/gemma", "--input", json.dumps(TICKETS[0]), "--log-db", str(db),
              "--json", env=server)  # fmt: skip
    assert one.returncode == 0, one.stderr
    path = [step["node"] for step in json.loads(one.stdout)["trace"]]
    assert path[:2] == ["Ticket", "Triage"] and len(path) == 3
    batch.write_text("".join(json.dumps(t) + "\n" for t in TICKETS))
    many = bae("run", EXAMPLE, "--lm", "openai/gemma", "--batch", str(batch), "--concurrency", "2",
               "--log-db", str(db), "--json", env=server)  # fmt: skip
    assert many.returncode == 0, many.stderr
    assert json.loads(many.stdout)["ok"] == 3
    stats = json.loads(bae("stats", "--log-db", str(db), "--json").stdout)["runs"]
    assert stats["versions"][0]["runs"] == 4
    nodes = {n["node"]: n for n in stats["nodes"]}
    assert nodes["Triage"]["calls"] == 4 and nodes["Triage"]["error_rate"] == 0.0
    assert all(n["prompt_tokens"] > 0 and n["completion_tokens"] > 0 for n in nodes.values())


def test_compile_with_a_small_budget_then_run_optimized(server: dict[str, str], tmp_path: Path) -> None:
    traces = TRAIN.read_text().splitlines()
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(traces[:12]) + "\n")
    dev.write_text("\n".join(traces[-2:]) + "\n")
    compiled = bae("compile", EXAMPLE, "--lm", "openai/gemma", "--trainset", str(train), "--devset", str(dev),
                   "--optimizer", "labeled", "--max-labeled-demos", "2", "--min-examples", "1",
                   "--out", str(tmp_path / "compiled"), "--json", env=server)  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    run = bae("run", EXAMPLE, "--compiled", str(tmp_path / "compiled"), "--lm", "openai/gemma", "--input",
              json.dumps(TICKETS[0]), "--no-log", "--json", env=server)  # fmt: skip
    assert run.returncode == 0, run.stderr
    manifest = (tmp_path / "compiled" / "v1" / "manifest.json").read_text()
    assert "127.0.0.1" not in manifest and "OPENAI" not in manifest  # no endpoint, no key in artifacts


def test_killing_the_server_mid_run_is_exit_4_with_one_line() -> None:
    proc, base, _ = start_server()
    run = bae_popen("run", EXAMPLE, "--lm", "openai/gemma", "--input", json.dumps(TICKETS[1]), "--no-log",
                    env=lm_env(base))  # a real process, running while its server dies
    try:
        time.sleep(8)  # started up, its first LM call in flight or about to be
        assert run.poll() is None, run.communicate()
    finally:
        stop(proc)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 4, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("bae: error")]
    assert len(errors) == 1, stderr
