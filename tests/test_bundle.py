"""``bae bundle``: a deployment folder that runs from where it is put, with no secrets and no pickles in it."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from tests import lms
from tests.cli import EXAMPLE, LMS, ROOT, bae

COMPILED = ROOT / "compiled"
HERE = Path(__file__).resolve()
FAKE_KEY = "sk-fake0123456789abcdefghijklmnop"
FAKE_BASE = "http://secret-host.internal:8443/v1"
TICKET = lms.TRACES[0][0]["fields"]


def keyed_lm() -> Any:
    """An LM configured the way production code often is: key and endpoint passed in, plus real settings."""
    import dspy

    return dspy.LM(
        "openai/gpt-4o-mini", api_key=FAKE_KEY, api_base=FAKE_BASE, temperature=0.3, max_tokens=256, num_retries=0
    )


def every_byte(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_a_bundle_runs_from_wherever_it_is_moved(tmp_path: Path) -> None:
    built = bae("bundle", "--compiled", str(COMPILED), "--out", str(tmp_path / "bundle"), cwd=ROOT)
    assert built.returncode == 0, built.stderr
    deployed = tmp_path / "elsewhere" / "deploy"
    shutil.move(tmp_path / "bundle", deployed)  # nothing in it points back at the repo

    files = {str(p.relative_to(deployed)) for p in deployed.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "requirements.txt", "prompts.json", "examples/support_triage.py"} <= files
    assert {"compiled/versions.json", "compiled/v1/manifest.json", "compiled/v1/nodes/Triage.choice.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt"))]
    assert (deployed / "compiled/v1/manifest.json").read_bytes() == (COMPILED / "v1/manifest.json").read_bytes()

    config = json.loads((deployed / "config.json").read_text())
    manifest = json.loads((COMPILED / "v1/manifest.json").read_text())
    assert config["version"] == "v1" and config["scores"] == manifest["scores"]
    assert config["graph"]["fingerprint"] == manifest["graph"]["fingerprint"]
    assert config["lm"] == {"model": manifest["lm"]["model"], "settings": {}}
    pins = [line for line in (deployed / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert f"dspy=={metadata.version('dspy')}" in pins and f"fastapi=={metadata.version('fastapi')}" in pins
    assert all("==" in line for line in pins) and not [p for p in pins if p.startswith(("pytest", "bae=="))]
    readme = (deployed / "README.md").read_text()
    assert "bae run examples/support_triage.py --compiled compiled" in readme and "bae serve" in readme
    scores = manifest["scores"]
    assert f"dev score naive {scores['naive']:.3f} -> optimized {scores['optimized']:.3f}." in readme

    ran = bae("run", "--compiled", "compiled", "--lm", f"{LMS}:oracle", "--input", json.dumps(TICKET),
              "--json", "--no-log", cwd=deployed)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["node"] == "BillingIssue" and json.loads(ran.stdout)["version"] == "v1"
    assert bae("inspect", "compiled", cwd=deployed).returncode == 0


def test_config_names_the_lm_but_keeps_no_key_or_endpoint(tmp_path: Path) -> None:
    secrets = {"OPENAI_API_KEY": FAKE_KEY, "OPENAI_API_BASE": FAKE_BASE}
    for name, spec in (("factory", f"{HERE}:keyed_lm"), ("litellm", "openai/gpt-4o-mini")):
        out = tmp_path / name
        built = bae("bundle", "--compiled", str(COMPILED), "--out", str(out), "--lm", spec, cwd=ROOT, env=secrets)
        assert built.returncode == 0, built.stderr
        lm = json.loads((out / "config.json").read_text())["lm"]
        # a model string gets bae's bounded max_tokens (a factory's LM keeps its own settings)
        expected = {"max_tokens": 256, "temperature": 0.3} if name == "factory" else {"max_tokens": 1024}
        assert lm == {"model": "openai/gpt-4o-mini", "settings": expected}
        written = every_byte(out)
        assert FAKE_KEY not in written and "secret-host" not in written
        assert "--lm openai/gpt-4o-mini" in (out / "README.md").read_text()


def test_a_tampered_version_is_refused(tmp_path: Path) -> None:
    compiled = tmp_path / "compiled"
    shutil.copytree(COMPILED, compiled)
    node_file = compiled / "v1" / "nodes" / "Triage.choice.json"
    node_file.write_text(node_file.read_text().replace("Route", "ROUTE", 1))
    built = bae("bundle", EXAMPLE, "--compiled", str(compiled), "--out", str(tmp_path / "bundle"))
    assert built.returncode == 3 and "checksum mismatch" in built.stderr and "Traceback" not in built.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compiled"]  # no bundle, no half-built folder


def test_a_stale_version_is_refused(tmp_path: Path) -> None:
    changed = tmp_path / "support_triage.py"
    source = Path(EXAMPLE).read_text()
    changed.write_text(source.replace('"""A problem with charges,', '"""A problem with money: charges,', 1))
    built = bae("bundle", str(changed), "--compiled", str(COMPILED), "--out", str(tmp_path / "bundle"))
    assert built.returncode == 3, built.stderr
    assert "BillingIssue.make (stale" in built.stderr and "recompile" in built.stderr
    assert not (tmp_path / "bundle").exists()


def test_a_graph_that_needs_files_left_behind_is_refused(tmp_path: Path) -> None:
    """The copied graph must load on its own: one importing a sibling module would break on deploy."""
    shutil.copy(EXAMPLE, tmp_path / "support_triage.py")
    (tmp_path / "wrapper.py").write_text("from support_triage import deps, graph  # noqa: F401\n")
    built = bae("bundle", str(tmp_path / "wrapper.py"), "--compiled", str(COMPILED), "--out", str(tmp_path / "b"))
    assert built.returncode == 2
    assert "does not load on its own" in built.stderr and "support_triage" in built.stderr
    assert not (tmp_path / "b").exists()
