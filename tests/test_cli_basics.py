"""The CLI's fast paths and its exit-code convention, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys


def bae(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bae_cli", *args], capture_output=True, text=True, timeout=60)


def test_version_and_help() -> None:
    from bae import __version__

    version = bae("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"bae {__version__}"
    help_ = bae("--help")
    assert help_.returncode == 0 and "Exit codes" in help_.stdout


def test_fast_paths_do_not_import_dspy() -> None:
    code = (
        "import sys; sys.argv=['bae','--version']\n"
        "from bae_cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('dspy', 'litellm', 'llama_cpp') if m in sys.modules]\n"
        "print('heavy:' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == "heavy:", out.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = bae("--no-such-flag")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
