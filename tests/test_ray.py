"""``--engine ray`` end to end: the real CLI on a real (simulated two-node) Ray cluster, against threads.

One Ray serves the whole session: ``ray.cluster_utils.Cluster`` with a head that runs nothing and two
one-CPU worker nodes, started once in the loopback-only namespace these tests run in
(``tests/loopback_namespace.py``), its files under a temporary ``RAY_TMPDIR``. Each ``bae`` process joins
it as a user's would, through ``RAY_ADDRESS``, so every test here takes the cluster path: the project
directory (a copy of the example graph, its compiled version and scripted LMs) is shipped to the workers.
Teardown checks that no Ray process is left and nothing was written to the machine-wide ``/tmp/ray``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bae.runlog import RunLog
from tests.cli import ROOT, bae, bae_process, environment, wait_for
from tests.lms import TRACES
from tests.loopback_namespace import isolated

RAY = pytest.mark.ray
TICKETS = [trace[0]["fields"] for trace in TRACES]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), found by parentage: Ray renames its idle workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str | None]:
    """The session's cluster (what ``RAY_ADDRESS`` says); None outside the namespace, where no body runs."""
    if not isolated():
        yield None
        return
    shared = Path("/tmp/ray")
    before = set(shared.iterdir()) if shared.exists() else set()  # other sessions may use it: only compare
    temp = tempfile.mkdtemp(prefix="bae-ray-")
    saved = dict(os.environ)
    # Ray's sessions, sockets, logs and its ray_current_cluster file go under $RAY_TMPDIR/ray; the nodes and every
    # bae process started here inherit the variables, and the nodes' workers import this checkout's bae.
    os.environ.update(
        RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )  # fmt: skip
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=0, include_dashboard=False)  # the head: schedules, runs no worker
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
        deadline = time.monotonic() + 20
        while (left := descendants(os.getpid())) and time.monotonic() < deadline:
            time.sleep(0.2)
        stray = Path(temp, "ray", "ray_current_cluster").exists()
        shutil.rmtree(temp, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved)
        after = set(shared.iterdir()) if shared.exists() else set()
        assert not left, f"processes left running: {[Path(f'/proc/{p}/cmdline').read_bytes()[:80] for p in left]}"
        assert not stray, "Cluster.shutdown left ray_current_cluster behind"
        assert after <= before, f"written to the machine-wide /tmp/ray: {after - before}"


def make_project(folder: Path) -> Path:
    """A user's project directory: the example graph, its compiled version, scripted LMs (``lms.py``)."""
    project, where = folder / "project", folder / "where"
    project.mkdir()
    where.mkdir()
    shutil.copy(ROOT / "examples" / "support_triage.py", project / "graph.py")
    shutil.copytree(ROOT / "compiled", project / "compiled")
    shutil.copy(ROOT / "tests" / "ray_lms.py", project / "lms.py")
    (project / "where.txt").write_text(str(where))
    return project


def batch_file(project: Path, tickets: list[dict[str, Any]], bad_line: int | None = None) -> Path:
    lines = [json.dumps(ticket) for ticket in tickets]
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"customer_email": "x@example.com"}')  # not a valid Ticket: refused
    path = project / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def routed(project: Path) -> int:
    """How many tickets the Ray workers have routed so far (``tests/ray_lms.py`` counts them)."""
    folder = Path((project / "where.txt").read_text())
    return sum(len(path.read_text().splitlines()) for path in folder.glob("calls-*"))


def places(project: Path) -> list[dict[str, Any]]:
    """Where the LM was built inside Ray workers: one record per worker process (``tests/ray_lms.py``)."""
    folder = Path((project / "where.txt").read_text())
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def log_rows(db: Path) -> list[dict[str, Any]]:
    """The run log's rows in the order written, timings left out."""
    rows = []
    for run in sorted(RunLog(db).runs(), key=lambda r: r.id):
        row = run.as_dict()
        for timing in ("id", "started_at", "duration_s"):
            row.pop(timing)
        row["calls"] = [{**call, "latency_s": None} for call in row["calls"]]
        rows.append(row)
    return rows


def run_batch(project: Path, tag: str, *flags: str, address: str | None, lm: str = "lms.py:oracle", **kw: Any) -> Any:
    """``bae run --batch in.jsonl`` in ``project``, writing ``<tag>.out``, ``<tag>.rec`` and ``<tag>.db``."""
    env = {"RAY_ADDRESS": address} if address else {}
    return bae(
        "run", "graph.py", "--compiled", "compiled", "--batch", "in.jsonl", "--lm", lm, "--output", f"{tag}.out",
        "--record", f"{tag}.rec", "--log-db", f"{tag}.db", *flags, cwd=project, env={**env, **kw.pop("env", {})}, **kw,
    )  # fmt: skip


# -- the same batch on threads and on the cluster ---------------------------------------------------------
@pytest.fixture(scope="module")
def both(ray_address: str | None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any] | None:
    """One batch (24 tickets and a refused line) run on threads, then on the cluster's two nodes."""
    if ray_address is None:
        return None
    project = make_project(tmp_path_factory.mktemp("both"))
    batch_file(project, TICKETS[:24], bad_line=5)
    threads = run_batch(project, "threads", "--concurrency", "4", "--json", address=None)
    ray = run_batch(project, "ray", "--engine", "ray", "--workers", "2", "--concurrency", "4", "--json",
                    address=ray_address)  # fmt: skip
    return {"project": project, "threads": threads, "ray": ray}


def _without_latency(summary: dict[str, Any]) -> dict[str, Any]:
    return {**summary, "usage": [{**row, "mean_latency_s": None} for row in summary["usage"]]}


@RAY
def test_threads_and_ray_write_the_same_results_records_and_run_log(both: dict[str, Any]) -> None:
    project, threads, ray = both["project"], both["threads"], both["ray"]
    assert threads.returncode == ray.returncode == 1, ray.stderr  # the refused line fails the batch: same exit
    assert (project / "ray.out").read_bytes() == (project / "threads.out").read_bytes()
    rows = [json.loads(line) for line in (project / "ray.out").read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, 26)) and [r["ok"] for r in rows].count(False) == 1
    assert (project / "ray.rec").read_bytes() == (project / "threads.rec").read_bytes()
    assert len((project / "ray.rec").read_text().splitlines()) == 24
    assert log_rows(project / "ray.db") == log_rows(project / "threads.db")
    assert len(log_rows(project / "ray.db")) == 24  # the refused line never ran
    assert _without_latency(json.loads(ray.stdout)) == _without_latency(json.loads(threads.stdout))
    assert ray.stderr == threads.stderr  # --json: the same few notes, and not a line from Ray


@RAY
def test_the_cluster_ran_the_batch_on_both_nodes_from_the_shipped_project(both: dict[str, Any]) -> None:
    """Evidence from inside the workers: each recorded its node and where its ``lms.py`` was loaded from."""
    found = places(both["project"])
    assert len({place["node"] for place in found}) == 2, found
    folder = Path((both["project"] / "where.txt").read_text())
    builds = [len(path.read_text().splitlines()) for path in folder.glob("built-*")]
    assert builds == [1, 1], builds  # each worker opened the version and built its LM once, for all its batches
    assert all("runtime_resources" in place["file"] and str(both["project"]) not in place["file"] for place in found)


@RAY
def test_an_evaluation_on_ray_matches_threads(ray_address: str | None, tmp_path: Path) -> None:
    assert ray_address is not None
    project = make_project(tmp_path)
    (project / "dev.jsonl").write_text("".join(json.dumps({"trace": trace}) + "\n" for trace in TRACES[:12]))
    common = ["eval", "graph.py", "--compiled", "compiled", "--dataset", "dev.jsonl", "--naive", "--lm",
              "lms.py:oracle", "--json"]  # fmt: skip
    threads = bae(*common, "--log-db", "threads.db", cwd=project)
    ray = bae(*common, "--log-db", "ray.db", "--engine", "ray", "--workers", "2", "--concurrency", "4", cwd=project,
              env={"RAY_ADDRESS": ray_address})  # fmt: skip
    assert threads.returncode == ray.returncode == 0, ray.stderr
    assert json.loads(ray.stdout) == json.loads(threads.stdout)
    assert log_rows(project / "ray.db") == log_rows(project / "threads.db")
    assert len(log_rows(project / "ray.db")) == 24  # 12 traces, two columns: every run once, as eval runs
    assert ray.stderr == threads.stderr


# -- faults ------------------------------------------------------------------------------------------------
@RAY
def test_a_worker_killed_mid_batch_is_replaced_and_every_input_answered_once(
    ray_address: str | None, tmp_path: Path
) -> None:
    assert ray_address is not None
    project = make_project(tmp_path)
    batch_file(project, (TICKETS * 3)[:160])
    env = environment({"RAY_ADDRESS": ray_address})
    args = ["run", "graph.py", "--compiled", "compiled", "--batch", "in.jsonl", "--lm", "lms.py:slow", "--engine",
            "ray", "--workers", "2", "--concurrency", "2", "--log-db", "runs.db", "--record", "rec.jsonl",
            "--output", "out.jsonl", "--json"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "bae_cli", *args], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(lambda: len(places(project)) >= 2 and routed(project) >= 20, proc, timeout=240)
        victim = places(project)[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)  # nothing but the summary on stdout: no notice of the worker's death
    assert (summary["ok"], summary["failed"], summary["unfinished"]) == (160, 0, 0)
    rows = [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, 161)) and all(row["ok"] for row in rows)
    assert len(log_rows(project / "runs.db")) == 160 and _logged(project) == 160  # once each, in the log too
    assert len((project / "rec.jsonl").read_text().splitlines()) == 160
    assert len(places(project)) >= 3 and victim in {place["pid"] for place in places(project)}  # a new worker
    assert "Traceback" not in stderr and "ray" not in stderr.lower()


def _logged(project: Path) -> int:
    import sqlite3

    path = project / "runs.db"  # read once the command ended (SQLite's WAL files are its own while it writes)
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(path)) as conn:
            count: int = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            return count
    except sqlite3.Error:
        return 0


@RAY
def test_an_input_whose_run_raises_fails_alone_on_both_engines(ray_address: str | None, tmp_path: Path) -> None:
    """A bug in the graph's own code for one input (its CRM service raises) is that input's failure."""
    project = make_project(tmp_path)
    source = (project / "graph.py").read_text()
    bug = '        if email == "boom@example.com":\n            raise ValueError("the CRM has no boom")\n'
    anchor = "        return self.plans.get("
    (project / "graph.py").write_text(source.replace(anchor, bug + anchor))
    batch_file(project, [*TICKETS[:3], {"customer_email": "boom@example.com", "text": "hi"}, *TICKETS[3:6]])
    threads = run_batch(project, "threads", address=None)
    ray = run_batch(project, "ray", "--engine", "ray", "--workers", "2", address=ray_address)
    assert threads.returncode == ray.returncode == 1, ray.stderr
    assert (project / "ray.out").read_bytes() == (project / "threads.out").read_bytes()
    rows = [json.loads(line) for line in (project / "ray.out").read_text().splitlines()]
    assert [row["ok"] for row in rows] == [True, True, True, False, True, True, True]
    assert rows[3]["error"] == "unexpected ValueError: the CRM has no boom"
    assert f"{Path('in.jsonl')}:4: unexpected ValueError: the CRM has no boom" in ray.stderr
    assert log_rows(project / "ray.db") == log_rows(project / "threads.db")
    assert [row["status"] for row in log_rows(project / "ray.db")] == ["ok"] * 3 + ["error"] + ["ok"] * 3


@RAY
def test_an_lm_that_is_down_exits_4_with_every_run_logged(ray_address: str | None, tmp_path: Path) -> None:
    project = make_project(tmp_path)
    batch_file(project, TICKETS[:4])
    result = run_batch(project, "ray", "--engine", "ray", "--workers", "2", "--json", lm="lms.py:down",
                       address=ray_address)  # fmt: skip
    assert result.returncode == 4, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["failed"]) == (0, 4)
    rows = [json.loads(line) for line in (project / "ray.out").read_text().splitlines()]
    assert all("LM still failing after 4 attempts" in row["error"] for row in rows) and len(rows) == 4
    assert [(row["status"], len(row["calls"])) for row in log_rows(project / "ray.db")] == [("error", 1)] * 4


@RAY
def test_a_graph_that_does_not_load_on_the_workers_is_one_line_and_nothing_runs(
    ray_address: str | None, tmp_path: Path
) -> None:
    """It imports a module only the driver's machine has (on its PYTHONPATH, outside the shipped directory)."""
    project = make_project(tmp_path)
    outside = tmp_path / "site"
    outside.mkdir()
    (outside / "crm_client.py").write_text("ENDPOINT = 'crm.internal'\n")
    (project / "graph.py").write_text((project / "graph.py").read_text() + "\nimport crm_client  # noqa: E402\n")
    batch_file(project, TICKETS[:6])
    pythonpath = os.pathsep.join([str(ROOT), str(outside)])
    result = bae_process("run", "graph.py", "--batch", "in.jsonl", "--lm", "lms.py:oracle", "--engine", "ray",
                         "--workers", "2", "--log-db", "runs.db", "--output", "out.jsonl", cwd=project,
                         env={"RAY_ADDRESS": ray_address or "", "PYTHONPATH": pythonpath})  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bae: error:")]
    assert errors == [
        "bae: error: on a Ray worker: importing graph.py failed: ModuleNotFoundError: No module named 'crm_client' "
        "(rerun with --debug for the traceback)"
    ], result.stderr
    assert result.stderr.strip().endswith(errors[0]) and "Traceback" not in result.stderr
    assert places(project) == []  # no worker got as far as building its LM
    assert _logged(project) == 0 and (project / "out.jsonl").read_text() == ""


@RAY
def test_files_outside_the_shipped_directory_are_refused_before_anything_runs(
    ray_address: str | None, tmp_path: Path
) -> None:
    project = make_project(tmp_path)
    batch_file(project, TICKETS[:2])
    elsewhere = tmp_path / "lms.py"
    shutil.copy(project / "lms.py", elsewhere)
    result = run_batch(project, "ray", "--engine", "ray", lm=f"{elsewhere}:oracle", address=ray_address)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"bae: error: with RAY_ADDRESS the current directory is shipped to the Ray workers, and --lm {elsewhere} is "
        "outside it: run from the directory that holds them"
    )


# -- Ctrl-C, and a local Ray ---------------------------------------------------------------------------------
@RAY
def test_ctrl_c_finishes_the_runs_under_way_and_keeps_every_finished_result(
    ray_address: str | None, tmp_path: Path
) -> None:
    assert ray_address is not None
    project = make_project(tmp_path)
    batch_file(project, (TICKETS * 3)[:160])
    args = ["run", "graph.py", "--compiled", "compiled", "--batch", "in.jsonl", "--lm", "lms.py:slow", "--engine",
            "ray", "--workers", "2", "--concurrency", "2", "--log-db", "runs.db", "--record", "rec.jsonl",
            "--output", "out.jsonl"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "bae_cli", *args], cwd=project, text=True,
                            env=environment({"RAY_ADDRESS": ray_address}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(lambda: routed(project) >= 10, proc, timeout=240)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert re.search(r"interrupted: finishing \d+ runs? in flight \(Ctrl-C again to abandon them\)", stderr), stderr
    assert stderr.splitlines()[-1] == "bae: error: interrupted" and "Traceback" not in stderr
    rows = [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]
    assert 0 < len(rows) < 160 and all(row["ok"] for row in rows)
    assert _logged(project) == len(rows) == len((project / "rec.jsonl").read_text().splitlines())
    assert f"{len(rows)} ok, 0 failed, {160 - len(rows)} not run (interrupted)" in stderr


@RAY
def test_without_ray_address_a_local_ray_is_started_and_stopped(
    ray_address: str | None, both: dict[str, Any], tmp_path: Path
) -> None:
    """The default: bae starts its own Ray on this machine, sized by --workers, and leaves nothing running."""
    assert ray_address is not None
    project = make_project(tmp_path)
    batch_file(project, TICKETS[:24], bad_line=5)
    running = set(descendants(os.getpid()))
    result = run_batch(project, "local", "--engine", "ray", "--workers", "2", "--concurrency", "4", address=None)
    assert result.returncode == 1, result.stderr
    assert (project / "local.out").read_bytes() == (both["project"] / "threads.out").read_bytes()
    assert set(descendants(os.getpid())) <= running  # its Ray stopped with it
    assert len({place["node"] for place in places(project)}) == 1  # one node: this machine
    assert all(str(project) in place["file"] for place in places(project))  # nothing shipped: the same files


@RAY
def test_ctrl_c_in_an_evaluation_stops_at_once_and_keeps_what_was_delivered(
    ray_address: str | None, tmp_path: Path
) -> None:
    """An evaluation has no use for the runs under way (as on threads): the first Ctrl-C abandons them and keeps
    what had come back (Ray returns results a batch at a time: in a batch this small, maybe none yet)."""
    assert ray_address is not None
    project = make_project(tmp_path)
    (project / "dev.jsonl").write_text("".join(json.dumps({"trace": trace}) + "\n" for trace in TRACES))
    args = ["eval", "graph.py", "--compiled", "compiled", "--dataset", "dev.jsonl", "--lm", "lms.py:slow",
            "--engine", "ray", "--workers", "2", "--concurrency", "2", "--output", "out.jsonl", "--log-db", "runs.db",
            "--json"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "bae_cli", *args], cwd=project, text=True,
                            env=environment({"RAY_ADDRESS": ray_address}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(lambda: routed(project) >= 20, proc, timeout=240)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "bae: error: interrupted" and "Traceback" not in stderr
    report = json.loads(stdout)
    (column,) = report["columns"]
    assert report["interrupted"] and not column["complete"] and column["traces"] < len(TRACES)
    lines = [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]
    assert len(lines) == column["traces"] == _logged(project)
    assert [line["source"] for line in lines] == [f"dev.jsonl:{n}" for n in range(1, len(lines) + 1)]
