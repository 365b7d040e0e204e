"""The README's test command is the one CI runs, and it installs every extra, so no test is skipped."""

from __future__ import annotations

import re
import tomllib

from tests.cli import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _install_target(command: str) -> str:
    (target,) = re.findall(r'pip install (?:--quiet )?-e "([^"]+)"', command)
    return target


def _pytest_command(command: str) -> str:
    (line,) = re.findall(r"(?:[A-Z_]+=\S+ )*python -m pytest[^\n#]*", command)
    return line.strip()


def test_the_dev_extra_pulls_in_every_other_extra() -> None:
    (itself,) = [r for r in EXTRAS["dev"] if r.startswith("bae[")]
    assert set(itself.removeprefix("bae[").removesuffix("]").split(",")) == set(EXTRAS) - {"dev"}


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    (test_line,) = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line]
    ci = (ROOT / ".ci" / "run").read_text()
    assert _install_target(test_line) == _install_target(ci) == ".[dev]"
    assert _pytest_command(test_line) == _pytest_command(ci) == "BAE_REQUIRE_ALL=1 python -m pytest -q"
