"""Shared fixtures: tests drive bae's real code paths through a scripted DSPy LM."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytest_plugins = ["tests.loopback_namespace"]  # tests marked ray run in a loopback-only network namespace


@pytest.fixture(scope="session")
def compiled_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example compiled once per session, as ``bae compile`` does by default (knn), with a scripted model
    that only answers well given few-shot demos (``tests/lms.py:fewshot``): a compiled root holding ``v1``.
    Shared by every test that only reads it; a test that changes it works on a copy (``shutil.copytree``),
    and one that changed it anyway fails the session at teardown."""
    from bae.compiler import CompileOptions, compile_graph
    from bae.loader import load_graph
    from tests import lms
    from tests.cli import EXAMPLE, TRAIN

    out = tmp_path_factory.mktemp("compiled") / "compiled"
    compile_graph(load_graph(EXAMPLE), lms.fewshot(), CompileOptions(trainset=TRAIN, out=out, notes="first"))
    yield from _read_only(out)


@pytest.fixture(scope="session")
def compiled_partial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A compiled root whose ``v1`` optimized the Triage choice and the billing and technical queues but not
    AccountIssue (its training traces hold no account ticket), on the few-shot model. Read only, as
    ``compiled_example``."""
    from bae.compiler import CompileOptions, compile_graph
    from bae.loader import load_graph
    from bae.optimizer import OptimizeSettings
    from tests import lms
    from tests.cli import EXAMPLE, TRAIN

    lines = TRAIN.read_text().splitlines()
    train = tmp_path_factory.mktemp("data") / "train.jsonl"
    train.write_text("\n".join([line for line in lines if '"AccountIssue"' not in line] + [lines[2]]) + "\n")
    out = tmp_path_factory.mktemp("compiled") / "compiled"
    options = CompileOptions(trainset=train, out=out, devset=train, settings=OptimizeSettings(optimizer="labeled"))
    report = compile_graph(load_graph(EXAMPLE), lms.fewshot(), options)
    assert {(o.node, o.predictor is None) for o in report.outcomes} >= {("AccountIssue", True)}
    yield from _read_only(out)


def _read_only(root: Path) -> Iterator[Path]:
    """``root`` for the session, then a check that no test changed a byte of it."""
    before = _digest(root)
    yield root
    assert _digest(root) == before, f"a test changed the shared {root}: copy it first"


def _digest(root: Path) -> dict[str, str]:
    files = (path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


# -- CI runs everything: with BAE_REQUIRE_ALL=1 (set by .ci/run) a missing extra is a failure, not a skip --
REQUIRE_ALL = os.environ.get("BAE_REQUIRE_ALL") == "1"
_REQUIRED_SKIPS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serve: needs the serve extra (fastapi, uvicorn)")
    # litellm installs this filter when imported, but pytest resets filters around collection, and the CLI
    # tests run in this process: the warnings (from types litellm builds lazily) are litellm's to silence
    config.addinivalue_line("filterwarnings", "ignore:.*`ReadOnly` qualifier:UserWarning")


def _required(report: pytest.CollectReport | pytest.TestReport) -> bool:
    """A skip CI must not pass over: a whole file (every one here is gated on an extra), a test marked
    ``local``, ``serve`` or ``ray``, or a test skipped because an import failed (``pytest.importorskip``)."""
    if isinstance(report, pytest.CollectReport):
        return True
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return report.nodeid in _MARKED or "could not import" in reason


_MARKED: set[str] = set()  # tests marked local, serve or ray (by marker: a keyword would match a folder's name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _MARKED.update(item.nodeid for item in items if any(item.get_closest_marker(m) for m in ("local", "serve", "ray")))


def _note(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and _required(report):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        _REQUIRED_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    if REQUIRE_ALL and _REQUIRED_SKIPS and session.exitstatus in passing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REQUIRE_ALL and _REQUIRED_SKIPS:
        terminalreporter.section("BAE_REQUIRE_ALL: skipped tests fail CI", red=True)
        terminalreporter.line("Install every extra (pip install -e '.[dev]': dev pulls in the others). Skipped:")
        for line in _REQUIRED_SKIPS:
            terminalreporter.line(f"  {line}")
