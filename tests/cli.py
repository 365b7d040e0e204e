"""Run the real ``bae`` CLI as a user or CI would: in this process by default, in a real one where the process
itself is under test.

``bae`` calls ``bae_cli.app.run(argv)``, the function the ``bae`` program's ``main()`` wraps, with what a
fresh process would have: its own stdin, stdout and stderr (Typer's test isolation, the environment
too), its own working directory, no logging handlers but its own (so a warning logged without a handler
reaches its stderr), no module imported from a user's file by an earlier command, and the signal handlers
and ``sys.argv`` it found put back afterwards. Spawning an interpreter that imports DSPy costs seconds;
this costs the command. Python warnings stay with pytest (its warnings summary shows them): pytest drops
the filters libraries install at import (litellm's), so on the command's stderr they would be noise a
process never prints.

``bae_process`` and ``bae_popen`` spawn ``python -m bae_cli``: for what only a process shows (signals and
Ctrl-C, start-up time and what it imported, exit-time work such as OpenTelemetry's flush or the embedded
model's cleanup, a server's lifetime).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "support_triage.py")
LMS = str(ROOT / "tests" / "lms.py")
TRAIN = ROOT / "examples" / "support_triage.train.jsonl"  # the example's gold traces (85: 64 train, 21 dev)
DEV = ROOT / "examples" / "support_triage.dev.jsonl"  # the 21 compile holds out of TRAIN (seed 0), for eval

Env = dict[str, str | None]  # variables to set, or (None) to unset


def environment(env: Env | None = None) -> dict[str, str]:
    """A child's environment: this checkout importable, no ``--debug`` tracebacks from the caller's shell, ``env``."""
    merged = {**os.environ, "PYTHONPATH": str(ROOT), "BAE_DEBUG": "", **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


@dataclass
class Completed:
    """An in-process command's outcome, read like ``subprocess.CompletedProcess``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str = field(repr=False)


Ran = Completed | subprocess.CompletedProcess[str]  # a command that ran, in this process or a real one


def bae(
    *args: str,
    cwd: Path | str | None = None,
    env: Env | None = None,
    timeout: float = 300,
    input: str | None = None,
) -> Completed:
    """``bae *args`` in this process, as a fresh process would run it (module docstring). ``env`` is laid over
    this process's environment for the command's duration; ``timeout`` interrupts it (as Ctrl-C would) and
    fails the test."""
    from typer.testing import CliRunner

    from bae_cli.app import run

    assert threading.current_thread() is threading.main_thread(), "a command swaps sys.stdout: one at a time"
    _import_consoles()
    argv = [str(arg) for arg in args]
    late = threading.Event()
    timer = threading.Timer(timeout, lambda: (late.set(), os.kill(os.getpid(), signal.SIGINT)))
    with CliRunner().isolation(input=input, env={"BAE_DEBUG": "", **(env or {})}) as (stdout, stderr, _):
        with _fresh_process(cwd):
            timer.start()
            try:
                code = run(argv)
            finally:
                timer.cancel()
            sys.stdout.flush()
            sys.stderr.flush()
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    if late.is_set():
        raise subprocess.TimeoutExpired(["bae", *argv], timeout, out, err)
    return Completed(["bae", *argv], code, out, err)


def bae_process(
    *args: str,
    cwd: Path | str | None = None,
    env: Env | None = None,
    timeout: float = 300,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m bae_cli *args`` in a real process, stdin closed unless ``input`` is given."""
    return subprocess.run(
        [sys.executable, "-m", "bae_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(env),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
    )


def bae_popen(*args: str, cwd: Path | str | None = None, env: Env | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bae_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=environment(env),
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until ``condition()`` holds: fail at once if ``proc`` exits first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- what a fresh process would have --------------------------------------------------------
def _import_consoles() -> None:
    """bae's Rich consoles read the width once, at import, from the stream then in place: import them where
    that stream is a pipe, as a command's would be, and not during a command given its own ``COLUMNS``
    (which would fix that width for every later command). A test of ``COLUMNS`` runs ``bae_process``."""
    if "bae_cli.common" not in sys.modules:
        from typer.testing import CliRunner

        with CliRunner().isolation(env={"COLUMNS": None}):  # a pipe's width, LOG_WIDTH: tables stay whole
            import bae_cli.common  # noqa: F401


class _CurrentStream:
    """A stream that is whatever ``sys.stdout``/``sys.stderr`` is when written to: a logging handler a library
    made during a command (on that command's captured stream) keeps writing where a process's would."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self.name).write(text))

    def flush(self) -> None:
        getattr(sys, self.name).flush()


_CURRENT = {"stdout": _CurrentStream("stdout"), "stderr": _CurrentStream("stderr")}
_LEVELS = ("", "bae", "bae.local.model.llama_cpp")  # the loggers --debug sets levels on


@contextmanager
def _fresh_process(cwd: Path | str | None) -> Iterator[None]:
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}
    where, argv = os.getcwd(), sys.argv[:]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    root_handlers, levels = root.handlers[:], {name: logging.getLogger(name).level for name in _LEVELS}
    hidden = _user_modules()
    for name in hidden:
        del sys.modules[name]
    root.handlers = []  # the test runner's capture: a process has none, so warnings reach stderr (lastResort)
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(where)
        sys.argv[:] = argv
        for sig, handler in handlers.items():
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        for handler in root.handlers:
            handler.close()
        root.handlers = root_handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        _repoint_handlers(streams)
        for name in _user_modules():
            del sys.modules[name]
        sys.modules.update(hidden)


def _repoint_handlers(streams: dict[str, Any]) -> None:
    """Handlers a library created during the command hold its captured stream: write to the current one."""
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            stream = getattr(handler, "stream", None)
            for name, captured in streams.items():
                if stream is captured and isinstance(handler, logging.StreamHandler):
                    handler.setStream(_CURRENT[name])


_LIBRARIES = tuple(str(Path(p).resolve()) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
_OWN = ("bae", "bae_cli", "tests", "__main__")


def _user_modules() -> dict[str, Any]:
    """Modules imported from a user's file (a graph, an ``--lm`` or ``--metric`` factory): a process imports its
    own copy of each, so an edited graph is read anew, as a fresh process would read it."""
    found = {}
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin is None or name.partition(".")[0] in _OWN:
            continue
        if not str(Path(origin).resolve()).startswith(_LIBRARIES):
            found[name] = module
    return found
