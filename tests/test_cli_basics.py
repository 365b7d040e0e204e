"""The CLI's fast paths and its exit-code convention, run as a user runs them.

What only a process shows runs in one: what it imported by the time it exits, whether garbage collection
is on, and that ``main()`` exits with the code ``run`` returned.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import EXAMPLE, LMS, bae, bae_process
from tests.workspace import assert_refused


def test_version_and_help() -> None:
    from bae import __version__

    version = bae("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"bae {__version__}"
    help_ = bae("--help")
    assert help_.returncode == 0 and "Exit codes" in help_.stdout


def imported_by(argv: list[str], wanted: str) -> list[str]:
    """The modules a fresh ``bae *argv`` process has imported when it exits that ``wanted`` (a
    condition on ``m``, the module name) selects."""
    code = (
        f"import sys; sys.argv={['bae', *argv]!r}\n"
        "from bae_cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('loaded:' + ','.join(sorted(m for m in sys.modules if {wanted})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1].startswith("loaded:"), out.stdout + out.stderr
    return [m for m in out.stdout.splitlines()[-1].removeprefix("loaded:").split(",") if m]


def test_fast_paths_do_not_import_dspy() -> None:
    assert imported_by(["--version"], "m in ('dspy', 'litellm', 'llama_cpp')") == []


def test_unknown_option_is_a_usage_error() -> None:
    """In a real process: ``main()`` exits with the code ``run`` returned, after the one line."""
    assert_refused(bae_process("--no-such-flag", timeout=60), 2, "No such option: --no-such-flag")
    assert_refused(bae("--no-such-flag"), 2, "No such option: --no-such-flag")


def test_in_process_commands_start_as_fresh_as_a_process(tmp_path: Path) -> None:
    """What ``tests/cli.py`` promises of every in-process command: a graph file edited since this process (a
    test) imported it is read anew, and the test's module is its own again after; ``--debug``'s log handler
    and levels end with its command; the working directory comes back."""
    from bae.loader import load_graph

    graph, where = tmp_path / "flow.py", os.getcwd()
    graph.write_text(Path(EXAMPLE).read_text())
    imported = load_graph(str(graph)).graph.start.__module__
    mine = sys.modules[imported]
    graph.write_text(Path(EXAMPLE).read_text().replace("AccountIssue", "AccountRequest"))
    shown = bae("graph", str(graph), "--json", cwd=tmp_path)
    assert os.getcwd() == where and sys.modules[imported] is mine
    nodes = {node["node"] for node in json.loads(shown.stdout)["nodes"]}
    assert "AccountRequest" in nodes and "AccountIssue" not in nodes

    ticket = '{"customer_email": "ana@northwind.io", "text": "I was charged twice."}'
    args = ("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--no-log", "--input", ticket)
    handlers, debugged, plain = logging.getLogger().handlers[:], bae("--debug", *args), bae(*args)
    assert debugged.returncode == plain.returncode == 0, debugged.stderr + plain.stderr
    assert "DEBUG bae" in debugged.stderr  # bae's debug log, on the command's own stderr
    assert plain.stderr.splitlines() == ["no --compiled: running naive (zero-shot) predictors"]
    assert logging.getLogger().handlers == handlers and logging.getLogger("bae").level == logging.NOTSET


def test_run_is_the_same_command_line_every_time_in_one_process() -> None:
    """``bae_cli.app.run`` is the in-process entry (tests, and any program embedding the CLI): each call parses
    its command line as the first one did. Typer builds the Click group anew per call, from the commands
    registered so far, so a command imported by an earlier call arrives without ``--debug``."""
    args = ("run", EXAMPLE, "--lm", f"{LMS}:oracle", "--no-log", "--input", "{}")
    first, second = bae(*args, "--debug"), bae(*args, "--debug")
    assert first.returncode == second.returncode == 2, (first.stderr, second.stderr)
    assert "Traceback" in first.stderr and "Traceback" in second.stderr


def test_help_lists_every_command_without_importing_them() -> None:
    assert imported_by(["--help"], "m.startswith('bae_cli.commands.') or m in ('bae.graph', 'pydantic')") == []
    from bae_cli.commands import COMMANDS

    listed = bae("--help").stdout
    assert all(f" {name} " in listed for name in COMMANDS), listed


def test_every_command_help_shows_all_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one line ``bae --help`` shows is the command's own, and ``bae CMD --help`` loads the real command."""
    import inspect

    from typer.main import get_command_from_info
    from typer.testing import CliRunner

    from bae_cli.app import app
    from bae_cli.commands import COMMANDS

    monkeypatch.setenv("COLUMNS", "250")
    for name, (_, summary) in COMMANDS.items():
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        info = next(c for c in app.registered_commands if c.name == name)
        assert " ".join(inspect.getdoc(info.callback).split("\n\n")[0].split()) == summary, name
        command = get_command_from_info(info, pretty_exceptions_short=False, rich_markup_mode="rich")
        for param in command.params:
            assert all(opt in result.output for opt in param.opts if opt.startswith("--")), (name, param.opts)


@pytest.mark.parametrize(("command", "collects"), [("run", True), ("serve", True), ("eval", True), ("inspect", False)])
def test_garbage_collection_is_back_on_for_commands_that_run_long(command: str, collects: bool) -> None:
    code = (
        f"import gc, sys; sys.argv=['bae', {command!r}, '--help']\n"
        "from bae_cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('gc:', gc.isenabled())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == f"gc: {collects}", out.stdout + out.stderr


def test_every_command_but_serve_has_json() -> None:
    """The README: "`--json` gives machine-readable output" for every command; ``serve`` answers JSON over HTTP."""
    from typer.main import get_command

    from bae_cli.app import app
    from bae_cli.commands import COMMANDS

    group = get_command(app)
    without = {name for name in COMMANDS if "--json" not in {o for p in group.load(name).params for o in p.opts}}
    assert without == {"serve"}
