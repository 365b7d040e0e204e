"""Ray for one command: a new Ray on this machine, or the cluster ``RAY_ADDRESS`` names, joined quietly.

Imported only when ``--engine ray`` is chosen (``import ray.data`` takes 1-3 s and 200 MB: pandas and
pyarrow), never on a start-up path; whether the extra is installed is asked without importing it.

- **Where.** Without an address a new local Ray is started (``address="local"``: a plain ``ray.init()``
  would join whatever cluster ``/tmp/ray`` last named, possibly another user's), sized to the workers,
  without its dashboard. With one (``RAY_ADDRESS``, Ray's own convention: ``host:6379``, ``ray://...``,
  ``auto``) the same command runs on that cluster, and the working directory is shipped to its workers
  (a runtime environment's ``working_dir``: the graph file, an LM factory, the compiled version), so a
  batch names them relative to it. On this machine the workers start in this directory already.
- **Ray's own settings travel in the environment only** (its processes inherit it): usage statistics off
  (a report sent over the network) unless the user chose otherwise, and for a local Ray token
  authentication with a token that lives in this process's environment only (Ray's default writes a
  world-readable ``~/.ray/auth_token`` and says so on stderr). The one place bae writes the environment,
  restored when the session closes (``tests/test_architecture.py`` checks no other place does).
  Credentials for a cluster are the user's (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``), never set here.
- **Quiet.** Ray's C++ core writes lines to file descriptor 2 that no Python logging setting reaches (a
  probe for the machine's address, a note on every actor pool): while the session is open that descriptor
  goes to a log file and ``sys.stderr`` (bae's messages, its progress bar) to the terminal it was; the
  notices Ray's driver prints on stdout when a worker dies are muted, so ``--json`` stays clean. Under
  ``--debug`` nothing is redirected.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from bae.exceptions import BaeInputError

EXTRA = "--engine ray needs the ray extra: pip install 'bae[ray]'"
NEEDS = ("ray", "pyarrow", "pandas")  # ray[data]: Ray Data imports pandas and pyarrow
# Never shipped to a cluster's workers (Ray also leaves out what .gitignore and .rayignore list).
SHIP_EXCLUDES = [".git/", ".bae/", ".venv/", "venv/", "__pycache__/", ".mypy_cache/", ".ruff_cache/",
                 ".pytest_cache/", "*.gguf"]  # fmt: skip


def installed() -> bool:
    """Whether ``ray[data]`` is installed, asked of the import system without importing it."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in NEEDS)
    except (ImportError, ValueError):
        return False


def _set_ray_variables(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, remove) Ray's own environment variables; returns what they were, to restore."""
    previous: dict[str, str | None] = {}
    for name, value in values.items():
        if not name.startswith("RAY_"):  # only Ray's settings, read by Ray's processes
            raise ValueError(f"not a Ray variable: {name}")
        previous[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return previous


class RaySession:
    """A Ray connection for the length of one command: ``open`` starts or joins, ``close`` leaves (and stops a
    Ray it started, with every worker). ``cpus`` is what the workers can use."""

    def __init__(self, address: str | None = None, cpus: int | None = None, quiet: bool = True) -> None:
        self.address, self.requested_cpus, self.quiet = address, cpus, quiet
        self.cpus = 0
        self.log_path: Path | None = None
        self._restore_env: dict[str, str | None] = {}
        self._restore_stderr: tuple[int, TextIO] | None = None

    @property
    def cluster(self) -> bool:
        """Joined an existing cluster (its workers may be on other machines), rather than started a local Ray."""
        return self.address is not None

    def open(self) -> None:
        if not installed():
            raise BaeInputError(EXTRA)
        local = self.address is None
        variables: dict[str, str | None] = {}
        if "RAY_USAGE_STATS_ENABLED" not in os.environ:
            variables["RAY_USAGE_STATS_ENABLED"] = "0"
        if local and "RAY_AUTH_MODE" not in os.environ:
            variables.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        self._restore_env = _set_ray_variables(variables)
        try:
            if self.quiet:
                self._quiet_native_stderr()
            self._init(local)
        except BaseException:
            self.close()
            raise

    def _init(self, local: bool) -> None:
        try:
            import ray
            import ray.data
        except ImportError as exc:
            raise BaeInputError(EXTRA, cause=exc) from exc
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if local:
            options.update(address="local", num_cpus=self.requested_cpus, include_dashboard=False)
        else:
            options.update(
                address=self.address, runtime_env={"working_dir": str(Path.cwd()), "excludes": SHIP_EXCLUDES}
            )
        try:
            ray.init(**options)
        except ConnectionError as exc:
            raise BaeInputError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={self.address}: {_first_line(exc)}: check the "
                "address, and RAY_AUTH_MODE=token with its RAY_AUTH_TOKEN if the cluster uses token auth",
                cause=exc,
            ) from exc
        except ValueError as exc:
            if "exceeds the maximum size" not in str(exc):
                raise
            raise BaeInputError(
                f"the working directory {Path.cwd()} is too big to ship to the Ray workers ({_first_line(exc)}): "
                "run from your project directory, or list what to leave out in a .rayignore",
                cause=exc,
            ) from exc
        # The driver prints workers' deaths and retries on sys.stdout even with log_to_driver=False (that would
        # corrupt --json); Ray's own debugger mutes worker output with this flag. Private: Ray is pinned.
        import ray._private.worker

        ray._private.worker._worker_logs_enabled = False
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # ERROR still prints a failed batch's traceback
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # bae draws its own
        context.enable_operator_progress_bars = False
        context.enable_auto_log_stats = False
        context.print_on_execution_start = False
        self.cpus = int(ray.cluster_resources().get("CPU", 0))

    def _quiet_native_stderr(self) -> None:
        handle, name = tempfile.mkstemp(prefix="bae-ray-", suffix=".log")
        self.log_path = Path(name)
        sys.stderr.flush()
        terminal = os.dup(2)
        os.dup2(handle, 2)
        os.close(handle)
        self._restore_stderr = (terminal, sys.stderr)
        if _descriptor(sys.stderr) == 2:  # bae writes on: else sys.stderr is not descriptor 2 (a capture) and stays
            sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=sys.stderr.encoding, errors="replace")

    def close(self) -> None:
        """Leave Ray (a local one stops, workers and all), then give back stderr and the environment."""
        if "ray" in sys.modules:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
        if self._restore_stderr is not None:
            terminal, stream = self._restore_stderr
            sys.stderr.flush()
            replacement = sys.stderr
            os.dup2(terminal, 2)
            os.close(terminal)
            sys.stderr = stream
            if replacement is not stream:
                replacement.close()
            self._restore_stderr = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
        _set_ray_variables(self._restore_env)
        self._restore_env = {}


@contextlib.contextmanager
def session(address: str | None = None, cpus: int | None = None, quiet: bool = True) -> Iterator[RaySession]:
    opened = RaySession(address, cpus, quiet)
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


def _descriptor(stream: TextIO) -> int | None:
    """The file descriptor ``stream`` writes to, None for one in memory."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
