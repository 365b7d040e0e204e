"""Production runtime: OptimizedLM, bae run (single, batch, record), the run log, stats, versions."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from bae.loader import load_graph
from bae.optimized_lm import OptimizedLM, create_optimized_lm, open_version
from tests import lms
from tests.cli import EXAMPLE, LMS, TRAIN, bae
from tests.runs import in_threads

TICKET = {
    "customer_email": "ana@northwind.io",
    "text": "We were billed twice for the March renewal (invoice INV-20931 and INV-20958). Please refund the "
    "duplicate charge, our finance team is asking me about it today.",
}


def account_ticket() -> dict[str, str]:
    line = next(line for line in TRAIN.read_text().splitlines() if '"AccountIssue"' in line)
    return json.loads(line)["trace"][0]["fields"]


def test_table_and_json_count_optimized_and_naive_calls(compiled_partial: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    args = ("run", "--compiled", str(compiled_partial), "--lm", f"{LMS}:fewshot", "--log-db", str(db))
    result = bae(*args, "--input", json.dumps(account_ticket()), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["node"] == "AccountIssue" and report["version"] == "v1"
    usage = {(u["node"], u["kind"]): u for u in report["usage"]}
    assert (usage[("Triage", "choice")]["optimized"], usage[("Triage", "choice")]["naive"]) == (1, 0)
    assert (usage[("AccountIssue", "make")]["optimized"], usage[("AccountIssue", "make")]["naive"]) == (0, 1)
    table = bae(*args, "--input", json.dumps(account_ticket()))
    assert table.returncode == 0, table.stderr
    assert "AccountIssue.make" in table.stdout and "Triage.choice" in table.stdout
    assert "trace: Ticket -> Triage -> AccountIssue" in table.stdout


def test_stale_node_falls_back_with_a_warning(
    compiled_partial: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = 'description="whether the customer asks for money back"'  # in BillingIssue's make prompt only
    source = Path(EXAMPLE).read_text().replace(old, 'description="a refund is wanted"')
    drifted = tmp_path / "support_triage.py"
    drifted.write_text(source)
    loaded = load_graph(str(drifted))
    ticket = loaded.graph.start(**TICKET)
    with caplog.at_level(logging.WARNING, logger="bae"):
        lm = create_optimized_lm(loaded.graph, compiled_partial, model=lms.oracle())  # said once, as the version opens
        result = loaded.graph.run(ticket, lm=lm, **loaded.deps)
        loaded.graph.run(ticket, lm=lm, **loaded.deps)
    assert ("BillingIssue", "make", "stale") in [(c.node, c.kind, c.source) for c in result.calls]
    warning = "v1: BillingIssue (make): its prompt changed since compile: using a naive predictor (stale)"
    assert [r.getMessage() for r in caplog.records] == [warning]
    assert lm.get_stats()["stale"] == 2 and lm.get_stats()["optimized"] == 2
    cli = bae("run", str(drifted), "--compiled", str(compiled_partial), "--lm", f"{LMS}:oracle", "--no-log",
              "--input", json.dumps(TICKET), "--json")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"warning: {warning}" in cli.stderr.splitlines()
    assert {u["node"]: u["stale"] for u in json.loads(cli.stdout)["usage"]}["BillingIssue"] == 1


def test_lookup_by_name_survives_a_second_import_of_the_graph(compiled_partial: Path) -> None:
    first = load_graph(EXAMPLE).graph
    predictors = open_version(compiled_partial, first).predictors
    import importlib.util

    spec = importlib.util.spec_from_file_location("support_triage_again", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["support_triage_again"] = module
    spec.loader.exec_module(module)
    lm = OptimizedLM(predictors, model=lms.oracle())
    result = module.graph.run(module.Ticket(**TICKET), lm=lm, crm=module.CustomerDirectory())
    assert {c.source for c in result.calls} == {"optimized"}


def test_fifty_concurrent_runs_share_one_optimized_lm(compiled_partial: Path) -> None:
    loaded = load_graph(EXAMPLE)
    lm = create_optimized_lm(loaded.graph, compiled_partial, model=lms.triage_lm(delay_s=0.005))
    traces = [json.loads(line)["trace"] for line in TRAIN.read_text().splitlines()[:50]]
    starts = [loaded.graph.start(**trace[0]["fields"]) for trace in traces]
    results = in_threads(lambda i: loaded.graph.run(starts[i], lm=lm, **loaded.deps), 50)
    for result, trace in zip(results, traces, strict=True):
        assert result.path == [step["node"] for step in trace]
        assert result.node.text == trace[0]["fields"]["text"]  # no cross-talk between runs
        assert len(result.calls) == 2
    assert lm.get_stats()["optimized"] + lm.get_stats()["naive"] == 100


def test_batch_keeps_order_reports_failures_and_logs_every_run(compiled_partial: Path, tmp_path: Path) -> None:
    lines = [json.dumps(json.loads(line)["trace"][0]["fields"]) for line in TRAIN.read_text().splitlines()[:12]]
    lines.insert(4, '{"customer_email": "x@y.z"}')  # missing text
    lines.insert(7, "{oops")
    batch = tmp_path / "in.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    out, db, rec = tmp_path / "out.jsonl", tmp_path / "runs.db", tmp_path / "rec.jsonl"
    result = bae("run", "--compiled", str(compiled_partial), "--lm", f"{LMS}:slow", "--batch", str(batch), "--output",
                 str(out), "--concurrency", "4", "--log-db", str(db), "--record", str(rec), "--json")  # fmt: skip
    assert result.returncode == 1, result.stderr  # some lines failed
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["failed"]) == (12, 2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 15))
    assert not rows[4]["ok"] and "text: Field required" in rows[4]["error"]
    assert not rows[7]["ok"] and "invalid JSON" in rows[7]["error"]
    assert sum(u["calls"] for u in summary["usage"]) == 24
    stats = json.loads(bae("stats", "--log-db", str(db), "--compiled", str(compiled_partial), "--json").stdout)
    assert stats["runs"]["versions"][0]["runs"] == 12
    assert sum(n["calls"] for n in stats["runs"]["nodes"]) == 24
    assert stats["versions"][0]["version"] == "v1" and stats["versions"][0]["active"]
    recorded = rec.read_text().splitlines()
    assert len(recorded) == 12
    compile_again = bae("compile", EXAMPLE, "--trainset", str(rec), "--out", str(tmp_path / "c2"), "--lm",
                        f"{LMS}:oracle", "--optimizer", "labeled", "--min-examples", "1", "--json")  # fmt: skip
    assert compile_again.returncode == 0, compile_again.stderr  # recorded runs feed back into compile


def test_stats_match_the_calls_made(compiled_partial: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    for _ in range(3):
        r = bae("run", "--compiled", str(compiled_partial), "--lm", f"{LMS}:oracle", "--log-db", str(db),
                "--input", json.dumps(TICKET))  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = bae("run", "--lm", f"{LMS}:oracle", EXAMPLE, "--log-db", str(db), "--input", json.dumps(TICKET))
    assert "running naive" in r.stderr
    stats = json.loads(bae("stats", "--log-db", str(db), "--json").stdout)["runs"]
    by_version = {v["version"]: v["runs"] for v in stats["versions"]}
    assert by_version == {"v1": 3, None: 1}
    nodes = {(n["version"], n["node"], n["kind"]): n for n in stats["nodes"]}
    assert nodes[("v1", "Triage", "choice")]["calls"] == 3
    assert nodes[("v1", "Triage", "choice")]["optimized_share"] == 1.0
    assert nodes[(None, "Triage", "choice")]["naive_share"] == 1.0
    only_v1 = json.loads(bae("stats", "--log-db", str(db), "--version", "v1", "--json").stdout)["runs"]
    assert [v["version"] for v in only_v1["versions"]] == ["v1"]


def test_promote_and_rollback_round_trip(compiled_partial: Path, tmp_path: Path) -> None:
    root = tmp_path / "compiled"
    shutil.copytree(compiled_partial, root)
    r = bae("compile", EXAMPLE, "--out", str(root), "--lm", f"{LMS}:oracle", "--optimizer", "labeled", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(bae("versions", str(root), "--json").stdout)
    assert [(v["version"], v["active"]) for v in listed] == [("v1", False), ("v2", True)]
    promoted = bae("promote", str(root), "v1", "--json")
    assert promoted.returncode == 0 and json.loads(promoted.stdout) == {"compiled": str(root), "active": "v1"}
    assert json.loads((root / "versions.json").read_text())["active"] == "v1"
    run = json.loads(bae("run", "--compiled", str(root), "--lm", f"{LMS}:oracle", "--no-log", "--input",
                         json.dumps(TICKET), "--json").stdout)  # fmt: skip
    assert run["version"] == "v1"
    assert bae("promote", str(root), "v2").returncode == 0
    assert json.loads((root / "versions.json").read_text())["active"] == "v2"
    missing = bae("promote", str(root), "v9")
    assert missing.returncode == 3 and "no version 'v9'" in missing.stderr


def test_corrupt_versions_json_is_an_artifact_error(compiled_partial: Path, tmp_path: Path) -> None:
    root = tmp_path / "compiled"
    shutil.copytree(compiled_partial, root)
    (root / "versions.json").write_text("{")
    for args in (("versions", str(root)), ("run", "--compiled", str(root), "--input", "{}"), ("inspect", str(root))):
        result = bae(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert "versions.json unreadable" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_names_every_field(compiled_partial: Path) -> None:
    result = bae("run", "--compiled", str(compiled_partial), "--lm", f"{LMS}:oracle", "--no-log", "--input",
                 '{"customer_email": 3}')  # fmt: skip
    assert result.returncode == 2
    assert "customer_email: Input should be a valid string" in result.stderr and "text: Field required" in result.stderr


def test_graph_command_marks_optimized_nodes(compiled_partial: Path) -> None:
    tree = bae("graph", EXAMPLE, "--compiled", str(compiled_partial))
    assert tree.returncode == 0, tree.stderr
    assert "Triage" in tree.stdout and "choice optimized" in tree.stdout
    mermaid = bae("graph", EXAMPLE, "--mermaid", "--compiled", str(compiled_partial)).stdout
    assert "Triage --> BillingIssue" in mermaid and "style Triage" in mermaid and "style AccountIssue" not in mermaid
    shown = bae("graph", EXAMPLE, "--compiled", str(compiled_partial), "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["start"] == "Ticket" and report["compiled"]["version"] == "v1" and report["problems"] == []
    nodes = {n["node"]: n for n in report["nodes"]}
    assert nodes["Triage"]["successors"] == ["BillingIssue", "TechnicalIssue", "AccountIssue"]
    assert nodes["Triage"]["decides"] and nodes["Ticket"]["custom"] and nodes["BillingIssue"]["may_end"]
    assert nodes["Triage"]["predictors"] == {"choice": "optimized"} and nodes["Ticket"]["predictors"] == {}
    assert nodes["AccountIssue"]["predictors"] == {"make": "naive"}  # the partial version has none for it
    assert report["mermaid"] == bae("graph", EXAMPLE, "--mermaid").stdout.strip()


def test_asyncio_runs_share_one_lm_and_keep_dspy_history_bounded(compiled_partial: Path) -> None:
    import asyncio

    loaded = load_graph(EXAMPLE)
    model = lms.triage_lm(delay_s=0.005)
    lm = create_optimized_lm(loaded.graph, compiled_partial, model=model)
    traces = [json.loads(line)["trace"] for line in TRAIN.read_text().splitlines()[:20]]

    async def main() -> list[object]:
        starts = [loaded.graph.start(**t[0]["fields"]) for t in traces]
        return await asyncio.gather(*(loaded.graph.arun(s, lm=lm, **loaded.deps) for s in starts))

    results = asyncio.run(main())
    assert [r.path for r in results] == [[s["node"] for s in t] for t in traces]
    assert model.history == []  # no per-call growth in a long-lived runtime
    assert all(p.history == [] for p in lm.optimized.values())


def test_a_failed_run_logs_its_calls_and_the_error(compiled_partial: Path, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    result = bae("run", "--compiled", str(compiled_partial), "--lm", f"{LMS}:garbled_billing", "--log-db", str(db),
                 "--input", json.dumps(TICKET))  # fmt: skip
    assert result.returncode == 1 and "BillingIssue (make)" in result.stderr
    from bae.runlog import RunLog

    [run] = RunLog(db).runs()
    assert run.status == "error" and "did not parse" in run.error
    assert [(c.node, c.kind, c.error is None) for c in run.calls] == [
        ("Triage", "choice", True),
        ("BillingIssue", "make", False),
    ]
