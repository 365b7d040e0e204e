"""What every benchmark shares: arguments, side-by-side timing, child processes, the table, the results file.

Benchmarks here measure *ratios* on a shared, noisy machine: each case is timed in the same
process run, interleaved round by round, so a burst of load from elsewhere lands on every
case alike. The figures are medians (and minimums) over rounds.

A benchmark script is a module with ``main(argv)``::

    args = parse(parser("startup", __doc__), argv)
    report = Report("startup", args, parameters={...}, columns=["command", "median s", ...])
    samples = interleave({"a": fn_a, "b": fn_b}, rounds=5)
    report.row(["a", f"{median(samples['a']):.3f}", ...])
    report.figure("a_median_s", median(samples["a"]))
    report.target("a / b", value, "<=", 0.25)
    report.finish()        # prints the table and the targets, writes <out>/<name>.json

``tests/test_bench.py`` runs every script's ``main(["--smoke", "--out", tmp])`` and checks
the results file; a new script goes in its ``SCRIPTS`` list.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
EXAMPLE = ROOT / "examples" / "support_triage.py"
COMPILED = ROOT / "compiled"
SCRIPTED = ROOT / "bench" / "scripted.py"


# -- arguments -----------------------------------------------------------------------------
def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--smoke`` (seconds, for the test suite) and ``--out``."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="A tiny run that only checks the script works.")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"Where {name}.json goes (default bench/results).")
    return ap


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line), keeping it and when the benchmark began for the results file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    args.argv = argv
    args.began = (datetime.now(UTC), time.perf_counter(), _load())
    return args


# -- timing ----------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def interleave(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Time every case once per round, rotating the order each round so none always goes first."""
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(timed(cases[name]))
    return samples


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum and count of a sample, for the results file."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


# -- child processes -------------------------------------------------------------------------
@dataclass
class Proc:
    """A finished child process: exit code, wall time, CPU time (user + system), peak memory and its output."""

    args: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stdout: str
    stderr: str

    def check(self) -> Proc:
        """Fail the benchmark loudly when the command it measures failed."""
        if self.returncode != 0:
            raise RuntimeError(f"{' '.join(self.args)} exited {self.returncode}:\n{self.stderr[-2000:]}")
        return self


def bae_command() -> list[str]:
    """The real ``bae`` entry point installed beside this interpreter, else ``python -m bae_cli``."""
    script = Path(sys.executable).parent / "bae"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bae_cli"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a measured child: this checkout importable, no debug tracebacks."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "BAE_DEBUG": "", "LITELLM_LOCAL_MODEL_COST_MAP": "True", **extra}


def run(args: Sequence[str], cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 1800) -> Proc:
    """Run a command to the end; its peak RSS comes from ``wait4``, so it is the child's own."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        child = subprocess.Popen(list(args), cwd=cwd, env=env or child_env(), stdout=out, stderr=err)
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Proc(
            list(args),
            child.returncode,
            wall,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024,  # KiB on Linux
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


# -- loopback only: where Ray may start ---------------------------------------------------------
# Ray's processes talk over the machine's network address (here eth0's, not 127.0.0.1) whatever
# --node-ip-address says, and tests and benchmarks talk to 127.0.0.1 only: so whatever starts Ray runs
# in a network namespace with nothing but loopback up (``loopback_only``), and refuses to otherwise.
SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1


def interfaces_up() -> list[str]:
    """The network interfaces up in this process's namespace. Asked of the kernel (``/sys/class/net`` shows
    the host's interfaces even inside a new network namespace)."""
    import fcntl
    import socket
    import struct

    up = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("16sH14s", name.encode()[:15], 0, b"\0" * 14)
            flags = struct.unpack("16sH14s", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
            if flags & IFF_UP:
                up.append(name)
    return up


def loopback_only(args: Sequence[str]) -> list[str]:
    """``args`` run in a new network namespace with only loopback up (``unshare -rn`` when not root: a user
    namespace maps the caller to root in it, which may bring ``lo`` up)."""
    flags = "-n" if os.geteuid() == 0 else "-rn"
    return ["unshare", flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *args]


def can_isolate() -> str | None:
    """Why ``loopback_only`` cannot work here (None: it can)."""
    try:
        probe = subprocess.run(loopback_only(["true"]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    return None if probe.returncode == 0 else f"unshare failed: {probe.stderr.strip() or probe.returncode}"


# -- machine and results -----------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return head.stdout.strip() or None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "bae": _version("bae"),
        "dspy": _version("dspy"),
        "git_commit": _git_commit(),
    }


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub table: what the script prints and what the README shows."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """One benchmark's table, figures and targets, printed and written as ``<out>/<name>.json``."""

    def __init__(self, name: str, args: argparse.Namespace, parameters: dict[str, Any], columns: list[str]) -> None:
        self.name = name
        self.args = args
        self.parameters = parameters
        self.columns = columns
        self.rows: list[list[Any]] = []
        self.figures: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def row(self, cells: Sequence[Any]) -> None:
        self.rows.append(list(cells))

    def figure(self, key: str, value: Any) -> None:
        self.figures[key] = value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def target(self, what: str, value: float, op: str, limit: float) -> None:
        """A figure the issue sets a bound on; ``op`` is ``<=`` or ``>=``."""
        met = value <= limit if op == "<=" else value >= limit
        self.targets.append({"what": what, "value": round(value, 3), "op": op, "limit": limit, "met": met})

    def command(self) -> str:
        return " ".join([f"python -m bench.{self.name}", *getattr(self.args, "argv", [])])

    def finish(self) -> Path:
        """Print the table and targets, and write the results file (atomically: no torn JSON)."""
        table = markdown_table(self.columns, self.rows)
        print(f"\n{self.name}{' (smoke)' if self.args.smoke else ''}\n\n{table}\n")
        for t in self.targets:
            print(f"target {t['what']} {t['op']} {t['limit']}: {t['value']} {'met' if t['met'] else 'MISSED'}")
        for text in self.notes:
            print(f"note: {text}")
        date, clock, load = self.args.began
        document = {
            "benchmark": self.name,
            "date": date.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - clock, 1),
            "command": self.command(),
            "smoke": bool(self.args.smoke),
            "machine": machine(),
            # 1/5/15-minute load averages: other work on the machine shows here (ratios are robust to it)
            "load_average": {"start": load, "end": _load()},
            "parameters": self.parameters,
            "figures": self.figures,
            "targets": self.targets,
            "notes": self.notes,
            "table": {"columns": self.columns, "rows": self.rows, "markdown": table},
        }
        self.args.out.mkdir(parents=True, exist_ok=True)
        path = self.args.out / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        print(f"wrote {path}")
        return path
