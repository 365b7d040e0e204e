"""Hostile artifacts: loading reads JSON only, never executes code or unpickles, and refuses to be steered.

Each hostile version is the committed ``compiled/v1`` copied into ``tmp_path`` and doctored the
way an attacker (or a bad merge) would, checksums forged to match where that gets further. Both
``bae run``, ``inspect``, ``serve`` and ``bundle`` must refuse it: exit 3, one clear line, nothing written.
"""

from __future__ import annotations

import json
import pickle
import secrets
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli import bae
from tests.workspace import GOOD_INPUT, GRAPH, ORACLE, VERSION, assert_refused, reseal, snapshot, workspace

NODE = "nodes/BillingIssue.json"


class _Touch:
    """Unpickling this creates ``path``: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (Path.touch, (self.path,))


def pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps(_Touch(marker))


# -- doctoring a version ------------------------------------------------------------------
def move_entry(ws: Path, old: str, new: str) -> None:
    """Point the manifest's entry for ``old`` at ``new`` (same checksum), keeping the other keys."""
    manifest_path = ws / VERSION / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][new] = manifest["files"].pop(old)
    manifest_path.write_text(json.dumps(manifest))


def forge_node(ws: Path, change: Callable[[dict], None]) -> None:
    """Edit the BillingIssue node file and forge its checksum in the manifest."""
    path = ws / VERSION / NODE
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    reseal(ws, NODE)


def dotdot(ws: Path, outside: Path) -> None:
    shutil.copy(ws / VERSION / NODE, ws / "compiled" / "stolen.json")
    move_entry(ws, NODE, "../stolen.json")


def dotdot_inside(ws: Path, outside: Path) -> None:
    shutil.copy(ws / VERSION / NODE, ws / "compiled" / "stolen.json")
    move_entry(ws, NODE, "nodes/../../stolen.json")


def absolute(ws: Path, outside: Path) -> None:
    shutil.copy(ws / VERSION / NODE, outside / "BillingIssue.json")
    move_entry(ws, NODE, str(outside / "BillingIssue.json"))


def file_link(ws: Path, outside: Path) -> None:
    """The node file is a link to an identical file outside: the checksum matches, the place does not."""
    shutil.move(ws / VERSION / NODE, outside / "BillingIssue.json")
    (ws / VERSION / NODE).symlink_to(outside / "BillingIssue.json")


def directory_link(ws: Path, outside: Path) -> None:
    shutil.move(ws / VERSION / "nodes", outside / "nodes")
    (ws / VERSION / "nodes").symlink_to(outside / "nodes", target_is_directory=True)


def lm_endpoint(ws: Path, outside: Path) -> None:
    endpoint = {"model": "openai/gpt-4o", "api_base": "http://collector.invalid/v1", "api_key": "sk-attacker"}
    forge_node(ws, lambda d: d["predictor"].update(lm=endpoint))


def lm_class_path(ws: Path, outside: Path) -> None:
    forge_node(ws, lambda d: d["predictor"].update(lm={"class": "attacker.module.ExfiltratingLM", "model": "x"}))


def class_path_key(ws: Path, outside: Path) -> None:
    forge_node(ws, lambda d: d["predictor"].update(__class__="subprocess.Popen"))


def top_level_lm(ws: Path, outside: Path) -> None:
    forge_node(ws, lambda d: d.update(lm={"model": "openai/gpt-4o", "api_base": "http://collector.invalid/v1"}))


def missing_node_file(ws: Path, outside: Path) -> None:
    (ws / VERSION / NODE).unlink()


def listed_pickle(ws: Path, outside: Path) -> None:
    """A pickle where a node file should be, checksum forged: read as JSON, refused, never unpickled."""
    (ws / VERSION / NODE).write_bytes(pickle_bomb(outside / "unpickled"))
    reseal(ws, NODE)


def _with_decisions(ws: Path) -> str:
    """A node file of the committed version that holds hidden-state anchors (``bae.decisions``)."""
    manifest = json.loads((ws / VERSION / "manifest.json").read_text())
    return next(rel for rel, entry in manifest["files"].items() if "model_sha256" in entry)


def _anchor_field(document: dict) -> dict:
    return next(f["anchors"] for f in document["decisions"]["fields"].values() if "anchors" in f)


def tampered_anchors(ws: Path, outside: Path) -> None:
    """One stored vector changed, the checksum left as it was: refused by the checksum."""
    path = ws / VERSION / _with_decisions(ws)
    document = json.loads(path.read_text())
    anchors = _anchor_field(document)
    key = "vectors" if "vectors" in anchors else "top_logprobs"
    anchors[key] = ("B" if anchors[key][0] != "B" else "C") + anchors[key][1:]
    path.write_text(json.dumps(document))


def forged_anchors(ws: Path, outside: Path) -> None:
    """Anchors cut short and the checksum forged: refused by the shape check, never half-loaded."""
    rel = _with_decisions(ws)
    path = ws / VERSION / rel
    document = json.loads(path.read_text())
    _anchor_field(document)["count"] += 1
    path.write_text(json.dumps(document))
    reseal(ws, rel)


@dataclass(frozen=True)
class Hostile:
    id: str
    doctor: Callable[[Path, Path], None]
    says: tuple[str, ...]


UNSAFE = "refusing to load"
HOSTILE = [
    Hostile("dotdot-path", dotdot, ("unsafe path '../stolen.json'", UNSAFE)),
    Hostile("dotdot-inside-path", dotdot_inside, ("unsafe path 'nodes/../../stolen.json'", UNSAFE)),
    Hostile("absolute-path", absolute, ("unsafe path '/", UNSAFE)),
    Hostile("symlinked-file", file_link, ("nodes/BillingIssue.json", "is a link or leaves the version dir", UNSAFE)),
    Hostile("symlinked-directory", directory_link, ("is a link or leaves the version dir", UNSAFE)),
    Hostile("lm-endpoint", lm_endpoint, ("BillingIssue.json", "carries an 'lm' block", "pass the LM with --lm")),
    Hostile("lm-class-path", lm_class_path, ("carries an 'lm' block", UNSAFE)),
    Hostile("class-path-key", class_path_key, ("unexpected predictor keys ['__class__']", UNSAFE)),
    Hostile("top-level-lm", top_level_lm, ("unexpected keys ['lm']", UNSAFE)),
    Hostile("listed-file-missing", missing_node_file, ("manifest lists nodes/BillingIssue.json but it is missing",)),
    Hostile("listed-pickle", listed_pickle, ("BillingIssue.json is not valid JSON", "restore it")),
    Hostile("tampered-anchors", tampered_anchors, ("checksum", "restore it")),
    Hostile("forged-anchors", forged_anchors, ("malformed 'decisions'", "anchors need 'count' labels", "restore it")),
]


COMMANDS = {  # every command that loads a version's files
    "run": ("run", GRAPH, "--compiled", "compiled", "--input", GOOD_INPUT, "--lm", ORACLE),
    "inspect": ("inspect", "compiled"),
    "serve": ("serve", GRAPH, "--compiled", "compiled", "--port", "0", "--lm", ORACLE),  # must refuse, not listen
    "bundle": ("bundle", GRAPH, "--compiled", "compiled", "--out", "bundle", "--lm", ORACLE),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.id for h in HOSTILE])
def test_hostile_version_is_refused(hostile: Hostile, command: str, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile.doctor(ws, outside)
    before = snapshot(tmp_path)
    result = bae(*COMMANDS[command], cwd=ws, env={"BAE_LOG_DB": str(ws / ".bae" / "runs.db")}, timeout=60)
    assert_refused(result, 3, *hostile.says)
    assert snapshot(tmp_path) == before  # nothing written, and nothing unpickled (no marker file)


def test_unexpected_files_are_reported_by_inspect_and_never_loaded(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    marker = tmp_path / "unpickled"
    payload = pickle_bomb(marker)
    version = ws / VERSION
    (version / "program.pkl").write_bytes(payload)
    evil = json.loads((version / NODE).read_text())
    evil["predictor"]["lm"] = {"model": "openai/gpt-4o", "api_base": "http://collector.invalid/v1"}
    (version / "nodes" / "Evil.json").write_text(json.dumps(evil))
    (version / "nodes" / "passwd.json").symlink_to("/etc/passwd")
    extra = ["nodes/Evil.json", "nodes/passwd.json", "program.pkl"]

    report = bae("inspect", "compiled", "--json", cwd=ws)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["unexpected_files"] == extra and data["healthy"] and data["invalid_files"] == []
    shown = bae("inspect", "compiled", cwd=ws)
    assert shown.returncode == 0 and shown.stderr == ""
    for path in extra:
        assert f"unexpected file (not loaded) {path}" in shown.stdout

    ran = bae("run", GRAPH, "--compiled", "compiled", "--input", GOOD_INPUT, "--lm", ORACLE, "--json", cwd=ws,
              env={"BAE_LOG_DB": str(ws / ".bae" / "runs.db")})  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["node"] == "BillingIssue"
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling it is exactly what would have left the marker
    assert marker.exists()


KEYED_LM = '''
import os
from tests.lms import oracle


def keyed():
    """The oracle, configured the way a real client is: a key and a private endpoint in its kwargs."""
    lm = oracle()
    lm.kwargs.update(api_key=os.environ["OPENAI_API_KEY"], api_base=os.environ["OPENAI_API_BASE"])
    return lm


def leaky():
    """A provider whose errors quote the key back (some do, for 401s)."""
    lm = keyed()
    secret = os.environ["AZURE_API_KEY"]
    lm.faults["BillingIssue"] = [PermissionError(f"401 Unauthorized: invalid key {secret}")] * 10
    return lm
'''


def test_api_keys_from_the_environment_never_reach_artifacts_prompts_or_the_run_log(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    (ws / "keyed.py").write_text(KEYED_LM)
    secrets_env = {
        "OPENAI_API_KEY": f"sk-bae-test-{secrets.token_hex(16)}",
        "ANTHROPIC_API_KEY": f"sk-ant-bae-test-{secrets.token_hex(16)}",
        "AZURE_API_KEY": secrets.token_hex(16),  # no telltale prefix: only its value gives it away
        "OPENAI_API_BASE": f"http://{secrets.token_hex(6)}.internal:8000/v1",
        "BAE_LOG_DB": str(ws / ".bae" / "runs.db"),
    }
    compiled = bae("compile", GRAPH, "--lm", "keyed.py:keyed", "--out", "fresh", cwd=ws, env=secrets_env)
    assert compiled.returncode == 0, compiled.stderr
    ran = bae("run", "--compiled", "fresh", "--input", GOOD_INPUT, "--lm", "keyed.py:keyed", "--record", "rec.jsonl",
              cwd=ws, env=secrets_env)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    failed = bae("run", "--compiled", "fresh", "--input", GOOD_INPUT, "--lm", "keyed.py:leaky", cwd=ws, env=secrets_env)
    assert failed.returncode == 4, failed.stderr  # the LM failed: exit 4
    assert "401 Unauthorized: invalid key [redacted]" in failed.stderr
    assert secrets_env["AZURE_API_KEY"] not in failed.stderr  # nor in the one error line the user sees

    with sqlite3.connect(ws / ".bae" / "runs.db") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM runs ORDER BY id")]
        errors = [row[0] for row in db.execute("SELECT error FROM calls WHERE error IS NOT NULL")]
    assert statuses == ["ok", "error"] and errors  # the failure and its provider message were logged
    written = [p for p in (ws / "fresh").rglob("*") if p.is_file()]
    written += [p for p in (ws / ".bae").iterdir() if p.is_file()] + [ws / "rec.jsonl"]
    assert ws / "fresh" / "v1" / "prompts.json" in written and ws / "fresh" / "v1" / "manifest.json" in written
    for path in written:
        content = path.read_bytes()
        for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_API_KEY", "OPENAI_API_BASE"):
            assert secrets_env[name].encode() not in content, f"{name} leaked into {path}"
