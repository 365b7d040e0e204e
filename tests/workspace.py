"""A throwaway project to damage, and the checks every refused command must pass.

Shared by the bad-input and hostile-artifact tables: a workspace in ``tmp_path`` holds the
example graph, its gold traces and a copy of the committed ``compiled/v1``; ``snapshot``
proves a refusal wrote nothing; ``assert_refused`` is the one-clear-line contract.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.cli import EXAMPLE, LMS, ROOT, TRAIN, Ran

GRAPH = "examples/support_triage.py"
TRAINSET = "examples/support_triage.train.jsonl"  # the example's gold traces, where a user keeps them
VERSION = Path("compiled") / "v1"
ORACLE = f"{LMS}:oracle"  # an LM and an input that work, so a refusal is always the damaged part's
GOOD_INPUT = '{"customer_email": "ana@northwind.io", "text": "I was charged twice for INV-2231, please refund."}'


def workspace(tmp_path: Path) -> Path:
    """A project as a user has it: ``examples/`` (graph + gold traces) and ``compiled/v1``."""
    ws = tmp_path / "ws"
    (ws / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE, ws / GRAPH)
    shutil.copy(TRAIN, ws / TRAINSET)
    shutil.copytree(ROOT / "compiled", ws / "compiled", ignore=shutil.ignore_patterns(".lock"))
    return ws


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file, link and directory under ``root``, files with bytes and mtime: any write or touch shows.

    Python's own ``__pycache__`` is left out: importing a graph file is importing Python.
    """
    files: dict[str, tuple[bytes, int] | None] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        if path.is_dir() and not path.is_symlink():
            files[str(path.relative_to(root))] = None  # created or removed shows; its mtime would not mean much
            continue
        data = str(path.readlink()).encode() if path.is_symlink() else path.read_bytes()
        files[str(path.relative_to(root))] = (data, path.lstat().st_mtime_ns)
    return files


def reseal(ws: Path, rel: str) -> None:
    """Update the manifest's checksum for ``rel``, as someone forging an artifact would."""
    manifest_path = ws / VERSION / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][rel]["sha256"] = hashlib.sha256((ws / VERSION / rel).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def assert_refused(result: Ran, code: int, *fragments: str) -> str:
    """The contract for every refusal: the exit code, one ``bae: error:`` line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("bae: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
