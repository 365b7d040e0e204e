"""Interruptions as a shell delivers them, to real ``bae`` processes.

Ctrl-C (SIGINT) during a batch keeps every finished result, in --output, the run log and
--record alike, and exits 130. SIGKILL during compile, even with the new version half
written, leaves no version behind, and the next compile cleans up and succeeds.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bae import artifacts
from tests.cli import EXAMPLE, LMS, ROOT, bae, bae_popen, wait_for
from tests.lms import TRACES as GOLD


def logged_runs(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """``bae_popen``, and at teardown every process it started is killed if a failed test left it running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        started.append(bae_popen(*args, cwd=cwd))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def interrupted_batch(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """A batch of every gold ticket on a 50 ms/call model, Ctrl-C'd once a few runs are logged."""
    batch, db, record = tmp_path / "in.jsonl", tmp_path / "runs.db", tmp_path / "rec.jsonl"
    batch.write_text("".join(json.dumps(trace[0]["fields"]) + "\n" for trace in GOLD))
    proc = spawn("run", EXAMPLE, "--lm", f"{LMS}:sluggish", "--batch", str(batch), "--concurrency", "2",
                 "--log-db", str(db), "--record", str(record), *flags)  # fmt: skip
    wait_for(lambda: logged_runs(db) >= 4, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), db, record


def assert_finished_runs_kept(results: list[dict[str, object]], db: Path, record: Path) -> None:
    assert 4 <= len(results) < len(GOLD)
    assert all(r["ok"] for r in results)
    lines = [int(r["line"]) for r in results]  # type: ignore[call-overload]
    assert lines == sorted(set(lines))
    for row in results:
        gold = GOLD[int(row["line"]) - 1]  # type: ignore[call-overload]
        assert [step["node"] for step in row["trace"]] == [step["node"] for step in gold]  # type: ignore[union-attr]
    # Nothing that finished is missing anywhere: runs under way at Ctrl-C were finished, not dropped.
    assert logged_runs(db) == len(results)
    assert len(record.read_text().splitlines()) == len(results)


def test_ctrl_c_during_a_batch_keeps_finished_results(spawn: Spawn, tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    result, db, record = interrupted_batch(spawn, tmp_path, "--output", str(output))
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines()[-1] == "bae: error: interrupted" and "Traceback" not in result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert_finished_runs_kept(rows, db, record)
    assert f"{len(rows)} ok, 0 failed, {len(GOLD) - len(rows)} not run (interrupted)" in result.stderr


def test_ctrl_c_during_a_json_batch_reports_the_unfinished(spawn: Spawn, tmp_path: Path) -> None:
    result, db, record = interrupted_batch(spawn, tmp_path, "--json")
    assert result.returncode == 130 and result.stderr.endswith("bae: error: interrupted\n"), result.stderr
    summary = json.loads(result.stdout)
    assert_finished_runs_kept(summary["results"], db, record)
    assert (summary["ok"], summary["failed"]) == (len(summary["results"]), 0)
    assert summary["unfinished"] == len(GOLD) - summary["ok"]


def test_a_second_ctrl_c_abandons_runs_stuck_on_a_hung_model(spawn: Spawn, tmp_path: Path) -> None:
    batch, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_text("".join(json.dumps(trace[0]["fields"]) + "\n" for trace in GOLD[:4]))
    proc = spawn("run", EXAMPLE, "--lm", f"{LMS}:stuck", "--batch", str(batch), "--concurrency", "2",
                 "--no-log", "--output", str(output), cwd=tmp_path)  # fmt: skip
    wait_for(lambda: (tmp_path / "stuck.mark").exists(), proc)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    proc.send_signal(signal.SIGINT)
    # the first Ctrl-C was handled (an event, not a sleep): it says it waits for the runs in flight
    wait_for(lambda: any("finishing 2 runs in flight" in line for line in lines), proc, timeout=60)
    assert proc.poll() is None  # and it does wait: the model never answers, so only a second Ctrl-C ends it
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    reader.join(timeout=30)
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr
    assert "finishing 2 runs in flight (Ctrl-C again to abandon them)" in stderr
    lines = stderr.splitlines()
    assert lines.index("interrupted again: runs in flight abandoned") < len(lines) - 2  # then the report (stderr)
    assert lines[-2:] == [f"0 ok, 0 failed, 4 not run (interrupted); results in {output}", "bae: error: interrupted"]
    assert "Traceback" not in stderr and output.read_text() == ""  # written, and nothing finished


def test_ctrl_c_during_compile_on_a_hung_model_exits_at_once(spawn: Spawn, tmp_path: Path) -> None:
    """Scoring runs in threads blocked on the model; Ctrl-C must not wait for them, nor write anything."""
    out = tmp_path / "compiled"
    proc = spawn("compile", EXAMPLE, "--optimizer", "labeled", "--out", str(out), "--lm", f"{LMS}:stuck",
                 cwd=tmp_path)  # fmt: skip
    wait_for(lambda: (tmp_path / "stuck.mark").exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and stderr.splitlines()[-1] == "bae: error: interrupted", stderr
    assert "Traceback" not in stderr
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".lock"]


# -- SIGKILL during compile ---------------------------------------------------------------------
COMPILE = ("compile", EXAMPLE, "--optimizer", "labeled", "--json")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A compiled root holding the committed v1, so a lost or half-made v2 would show."""
    path = tmp_path / "compiled"
    shutil.copytree(ROOT / "compiled", path)
    return path


def versions(root: Path) -> tuple[str | None, list[str]]:
    index = json.loads((root / "versions.json").read_text())
    return index["active"], [v["version"] for v in index["versions"]]


def assert_untouched(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["v1", "versions.json"]
    assert versions(root) == ("v1", ["v1"])
    listed = bae("versions", str(root), "--json")
    assert listed.returncode == 0 and [v["version"] for v in json.loads(listed.stdout)] == ["v1"]


def compile_again_cleans_up(root: Path) -> None:
    result = bae(*COMPILE, "--out", str(root), "--lm", f"{LMS}:oracle")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == "v2"
    assert versions(root) == ("v2", ["v1", "v2"])
    assert not list(root.glob(".building-*"))
    assert bae("inspect", str(root), "--graph", EXAMPLE).returncode == 0


def test_sigkill_while_the_version_is_being_written(spawn: Spawn, root: Path) -> None:
    """Killed with the new version's files on disk, waiting for the root's lock: the worst moment."""
    with artifacts.locked(root):  # the lock a concurrent compile would hold
        proc = spawn(*COMPILE, "--out", str(root), "--lm", f"{LMS}:oracle")
        wait_for(lambda: any(root.glob(".building-*/nodes/*.json")), proc)
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    [stale] = root.glob(".building-*")
    assert stale.name.startswith(f".building-{proc.pid}-") and not (stale / "manifest.json").exists()
    assert_untouched(root)
    run = bae("run", "--compiled", str(root), "--lm", f"{LMS}:oracle", "--no-log", "--json",
              "--input", json.dumps(GOLD[0][0]["fields"]))  # fmt: skip
    assert run.returncode == 0 and json.loads(run.stdout)["version"] == "v1", run.stderr
    compile_again_cleans_up(root)


@pytest.mark.parametrize("optimizer", ["bootstrap", "labeled"], ids=["optimizing", "scoring"])
def test_sigkill_while_waiting_on_the_lm(spawn: Spawn, root: Path, tmp_path: Path, optimizer: str) -> None:
    """Killed at its first LM request: bootstrap asks while optimizing, labeled first asks while scoring."""
    proc = spawn("compile", EXAMPLE, "--optimizer", optimizer, "--out", str(root), "--lm", f"{LMS}:stuck",
                 cwd=tmp_path)  # fmt: skip
    wait_for(lambda: (tmp_path / "stuck.mark").exists(), proc)
    proc.kill()
    proc.wait(timeout=30)
    assert not list(root.glob(".building-*"))
    assert_untouched(root)
    compile_again_cleans_up(root)
