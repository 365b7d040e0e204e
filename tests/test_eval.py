"""``bae eval`` and ``bae.evaluate``: versions scored side by side on any dataset, and the CI gates.

Two versions of the example differ only in demos: ``v1`` compiled with labeled demos for every
predictor, ``v2`` the same files with the choice predictor's demos removed. The scripted model
answers right only when the prompt carries demos, so on a dev file of 3 billing, 5 technical and
4 account tickets ``v1`` routes and fills everything right, while ``v2`` routes every ticket to
billing: right for the 3 billing tickets (score 1 each), a wrong choice earns 0 on the other 9.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

import bae
from bae import artifacts
from bae.compiler import CompileOptions, compile_graph
from bae.dataset import load_dataset
from bae.loader import load_graph
from tests import lms
from tests.cli import DEV as EXAMPLE_DEV
from tests.cli import EXAMPLE, LMS, TRAIN, bae_popen, wait_for
from tests.cli import bae as run_bae
from tests.workspace import assert_refused

LINES = TRAIN.read_text().splitlines()  # sorted by queue: billing, technical, account
DEV = LINES[:3] + LINES[40:45] + LINES[-4:]
QUEUES = Counter(json.loads(line)["trace"][-1]["node"] for line in DEV)
FEWSHOT = f"{LMS}:fewshot"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled root: v1 (labeled demos everywhere, active, recorded 1.0) and v2 (v1 without
    Triage.choice's demos, recorded 0.25)."""
    out = tmp_path_factory.mktemp("eval") / "compiled"
    rest = tmp_path_factory.mktemp("train") / "train.jsonl"
    rest.write_text("\n".join(line for line in LINES if line not in DEV) + "\n")
    options = CompileOptions(trainset=rest, out=out, notes="demos everywhere")
    options.settings.optimizer = "labeled"
    compile_graph(load_graph(EXAMPLE), lms.fewshot(), options)
    manifest = json.loads((out / "v1" / "manifest.json").read_text())
    files = {rel: json.loads((out / "v1" / rel).read_text()) for rel in manifest["files"]}
    files["nodes/Triage.choice.json"]["predictor"]["demos"] = []
    manifest["files"]["nodes/Triage.choice.json"]["demos"] = 0
    manifest["notes"] = "v1 without the choice demos"
    manifest["scores"]["optimized"] = 0.25  # what v2 scores on DEV: each column shows its own version's record
    artifacts.write_version(out, files, manifest, activate=False)
    return out


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dev.jsonl"
    path.write_text("\n".join(DEV) + "\n")
    assert QUEUES == {"BillingIssue": 3, "TechnicalIssue": 5, "AccountIssue": 4}
    return path


def eval_cli(root: Path, dev: Path, *flags: str, lm: str = FEWSHOT, db: Path | None = None):
    log = ("--log-db", str(db)) if db else ("--no-log",)
    return run_bae("eval", EXAMPLE, "--compiled", str(root), "--dataset", str(dev), "--lm", lm, *log, *flags)


def naive_score() -> float:
    """Without demos the model routes everything to billing and fills in lms.WRONG: only billing tickets
    earn, their choice (1) and each gold field that happens to equal the wrong answer, over 3."""
    billing = [json.loads(line)["trace"][-1]["fields"] for line in DEV[:3]]
    earned = sum((1 + (f["priority"] == "low") + (f["refund_requested"] is False)) / 3 for f in billing)
    return earned / len(DEV)


def test_two_versions_differing_in_demos_side_by_side(root: Path, dev: Path) -> None:
    result = bae.evaluate(EXAMPLE, dev, lm=lms.fewshot(), compiled=root, versions=["v1", "v2"], naive=True)
    assert isinstance(result, bae.Evaluation)
    v1, v2, naive = result.columns
    assert [(c.name, c.role) for c in result.columns] == [("v1", "version"), ("v2", "version"), ("naive", "naive")]
    assert (v1.score.score, v1.score.path_accuracy, v1.score.errors) == (1.0, 1.0, 0)
    assert v1.score.per_predictor == {("Triage", "choice"): 1.0, **{(q, "make"): 1.0 for q in lms.QUEUES}}
    assert v2.score.score == pytest.approx(3 / 12) and v2.score.path_accuracy == pytest.approx(3 / 12)
    assert v2.score.per_predictor == {("Triage", "choice"): pytest.approx(0.25), ("BillingIssue", "make"): 1.0}
    assert naive.score.score == pytest.approx(naive_score())
    # confusion: gold rows x answers; v1 routes every ticket right, v2 and the naive graph all to billing
    assert v1.score.confusion == {"Triage.choice": {q: {q: n} for q, n in QUEUES.items()}}
    assert (
        v2.score.confusion
        == naive.score.confusion
        == {"Triage.choice": {q: {"BillingIssue": n} for q, n in QUEUES.items()}}
    )
    predictors = ["AccountIssue.make", "BillingIssue.make", "TechnicalIssue.make", "Triage.choice"]
    assert result.delta(v1) == {"score": 0.0, "score_interval": [0.0, 0.0], "path_accuracy": 0.0,
                                "per_predictor": dict.fromkeys(predictors, 0.0)}  # fmt: skip
    v2_delta = result.delta(v2)
    low, high = v2_delta.pop("score_interval")  # paired: v2 loses exactly the 9 tickets it misroutes, never gains
    assert -1.0 <= low < -0.75 < high < 0
    assert v2_delta == {
        "score": -0.75,
        "path_accuracy": -0.75,
        "per_predictor": {"BillingIssue.make": 0.0, "Triage.choice": -0.75},
    }
    # as the README shows it: delta() is every column's, by name; delta("v2") one column's
    assert result.delta() == {"v1": result.delta(v1), "v2": result.delta(v2), "naive": result.delta(naive)}
    assert result.delta("v2") == result.delta(v2) and result.column("naive") is naive
    with pytest.raises(KeyError, match="no column 'v3': the columns are v1, v2, naive"):
        result.delta("v3")
    assert (v1.recorded_score, v2.recorded_score, naive.recorded_score) == (1.0, 0.25, None)
    assert v1.stale == v2.stale == naive.stale == []
    assert v1.usage["calls"] == v2.usage["calls"] == 2 * len(DEV)  # a choice and a make per ticket
    # failing somewhere: the naive graph's two billing tickets whose gold fields differ from lms.WRONG, v2's other 9
    assert [trace.source for trace, _ in result.failing()] == [f"{dev}:{n}" for n in (1, 2, *range(4, 13))]
    assert result.gates == [] and result.passed


def test_the_cli_table_json_and_output_agree(root: Path, dev: Path, tmp_path: Path) -> None:
    output, db = tmp_path / "runs.jsonl", tmp_path / "runs.db"
    flags = ("--version", "v1", "--version", "v2", "--naive", "--show-failures", "3")
    shown = eval_cli(root, dev, *flags, db=db)
    assert shown.returncode == 0, shown.stderr
    report = eval_cli(root, dev, *flags, "--json", "--output", str(output))
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    columns = {c["name"]: c for c in data["columns"]}
    assert list(columns) == ["v1", "v2", "naive"] and data["dataset"]["traces"] == 12
    assert (columns["v1"]["score"], columns["v2"]["score"]) == (1.0, 0.25)
    assert columns["v2"]["delta"]["score"] == -0.75 and columns["naive"]["delta"]["score"] == round(
        naive_score() - 1.0, 4
    )
    assert columns["v2"]["confusion"]["Triage.choice"]["TechnicalIssue"] == {"BillingIssue": 5}

    # the table: one row per figure, a column per version, deltas against v1 in brackets
    rows = {}
    for line in shown.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("\u2502")]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    naive = columns["naive"]
    assert rows["whole graph"] == ["1.000", "0.250 (-0.750)", f"{naive['score']:.3f} ({naive['delta']['score']:+.3f})"]
    assert rows["95% interval"] == ["[{:.3f}, {:.3f}]".format(*c["score_interval"]) for c in columns.values()]
    assert rows["path accuracy"] == ["1.000", "0.250 (-0.750)", "0.250 (-0.750)"]
    assert rows["Triage.choice"] == ["1.000", "0.250 (-0.750)", "0.250 (-0.750)"]
    assert rows["TechnicalIssue.make"] == ["1.000", "-", "-"]
    assert rows["recorded at compile"] == ["1.000", "0.250", "-"]
    assert [c["recorded_score"] for c in columns.values()] == [1.0, 0.25, None]
    assert rows["LM calls"] == ["24", "24", "24"]
    # the confusion table: every count of v1 / v2 / naive in one cell
    assert rows["TechnicalIssue"] == ["0 / 5 / 5", "5 / 0 / 0", "0 / 0 / 0"]
    assert rows["BillingIssue"] == ["3 / 3 / 3", "0 / 0 / 0", "0 / 0 / 0"]
    low, high = columns["v2"]["delta"]["score_interval"]
    assert -1 <= low < -0.75 < high < 0
    assert f"whole graph, v2 - v1: -0.750, 95% interval [{low:+.3f}, {high:+.3f}]: entirely below 0" in shown.stdout
    assert "failing traces: 11 of 12, first 3" in shown.stdout
    assert data["failing"] == 11 and [f["source"] for f in data["failures"]] == [f"{dev}:{n}" for n in (1, 2, 4)]
    failure = data["failures"][2]
    assert failure["gold"]["path"] == ["Ticket", "Triage", "TechnicalIssue"]
    assert failure["runs"]["v2"]["path"] == ["Ticket", "Triage", "BillingIssue"] and failure["runs"]["v2"]["score"] == 0
    assert failure["runs"]["v1"]["steps"] == failure["gold"]["steps"]
    gold_line = f"  gold   Ticket -> Triage -> TechnicalIssue {json.dumps(failure['gold']['steps'][1]['fields'])}"
    assert gold_line in shown.stdout.splitlines()

    # --output: one line per trace and version, in the dataset format, with the run's score
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(x["source"], x["version"]) for x in lines[:3]] == [(f"{dev}:1", v) for v in ("v1", "v2", "naive")]
    assert len(lines) == 36 and data["output"] == str(output)
    for name, column in columns.items():
        scores = [x["score"] for x in lines if x["version"] == name]
        assert sum(scores) / len(scores) == pytest.approx(column["score"], abs=1e-4)
    again = load_dataset(output, load_graph(EXAMPLE).graph)  # fix a line by hand, give it to bae compile
    assert len(again.traces) == 36 and again.invalid == []

    # the run log: the runs are eval runs, left out of bae stats unless --eval
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT purpose, COUNT(*) FROM runs GROUP BY purpose").fetchall() == [("eval", 36)]
    production = json.loads(run_bae("stats", "--log-db", str(db), "--compiled", str(root), "--json").stdout)
    evals = json.loads(run_bae("stats", "--log-db", str(db), "--compiled", str(root), "--json", "--eval").stdout)
    assert production["runs"]["versions"] == [] and production["purpose"] == "run"
    assert [(v["version"], v["runs"]) for v in evals["runs"]["versions"]] == [(None, 12), ("v1", 12), ("v2", 12)]


def test_a_difference_the_traces_cannot_tell_apart_says_so(root: Path, dev: Path) -> None:
    """v2 and the naive graph both route every ticket to billing; v2's demos get the fields of two billing
    tickets right that the naive graph gets wrong: a difference of 2 tickets in 12, within the noise."""
    result = eval_cli(root, dev, "--version", "v2", "--naive", "--json")
    delta = json.loads(result.stdout)["columns"][1]["delta"]
    low, high = delta["score_interval"]
    assert delta["score"] == round(naive_score() - 0.25, 4) < 0 and low < delta["score"] and high == 0.0
    shown = eval_cli(root, dev, "--version", "v2", "--naive").stdout
    assert f"whole graph, naive - v2: {delta['score']:+.3f}, 95% interval [{low:+.3f}, +0.000]: includes 0: these " \
        "traces cannot tell the two apart" in shown  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "code", "says"),
    [
        (("--min-score", "1.0"), 0, "pass min-score: v1 scored 1.000: reaches --min-score 1"),
        (("--version", "v1", "--naive", "--min-score", "0.9"), 0, "pass min-score"),  # the naive graph is not gated
        (("--version", "v1", "--version", "v2", "--min-score", "0.5"), 1,
         "gate failed: v2 scored 0.250: 0.250 below --min-score 0.5"),
        (("--version", "v2", "--baseline", "v1", "--max-drop", "0.8"), 0, "pass baseline"),
        (("--version", "v2", "--baseline", "v1", "--max-drop", "0.5"), 1,
         "gate failed: v2 scored 0.250, 0.750 below baseline v1 (1.000): --max-drop allows 0.5"),
        (("--version", "v2", "--baseline", "v1"), 1, "0.750 below baseline v1 (1.000): --max-drop allows 0"),
        (("--version", "v1", "--baseline", "v2"), 0, "v1 scored 1.000, 0.750 above baseline v2 (0.250)"),
    ],
    ids=["min-score-reached", "naive-not-gated", "min-score-missed", "drop-allowed", "drop-too-big",
         "default-no-drop", "above-baseline"],
)  # fmt: skip
def test_gates(root: Path, dev: Path, flags: tuple[str, ...], code: int, says: str) -> None:
    result = eval_cli(root, dev, *flags)
    assert result.returncode == code, result.stderr
    if code:
        assert result.stderr.splitlines()[-1].startswith("bae: error: gate failed: ")
        assert result.stderr.splitlines()[-1].endswith(says)
        assert result.stderr.count("bae: error:") == 1 and "Traceback" not in result.stderr
    else:
        assert says in result.stdout


def test_gates_in_json(root: Path, dev: Path) -> None:
    result = eval_cli(root, dev, "--version", "v2", "--baseline", "v1", "--min-score", "0.2", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert [c["name"] for c in data["columns"]] == ["v2", "v1"] and data["columns"][1]["role"] == "baseline"
    assert [(g["gate"], g["version"], g["passed"]) for g in data["gates"]] == [
        ("min-score", "v2", True),  # the baseline, evaluated only to compare, is not gated
        ("baseline", "v2", False),
    ]
    assert data["passed"] is False


@pytest.mark.parametrize(
    ("bad_line", "change", "says"),
    [
        (3, lambda t: t[2].update(node="RefundIssue"), "dev.jsonl:3: step 3: unknown node 'RefundIssue'"),
        (5, lambda t: t[0]["fields"].pop("text"), "dev.jsonl:5: step 1 (Ticket): field text: Field required"),
    ],
    ids=["unknown-node", "missing-start-field"],
)
def test_a_bad_dataset_line_is_exit_2_before_any_lm_call(root: Path, tmp_path: Path, bad_line: int, change,
                                                         says: str) -> None:  # fmt: skip
    records = [json.loads(line) for line in DEV]
    change(records[bad_line - 1]["trace"])
    bad = tmp_path / "dev.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    output, db = tmp_path / "out.jsonl", tmp_path / "runs.db"
    # the hung model would never answer: any LM call would time the test out
    result = eval_cli(root, bad, "--output", str(output), lm=f"{LMS}:stuck", db=db)
    assert_refused(result, 2, says, "use --skip-invalid")
    assert not output.exists() and not db.exists()
    skipped = eval_cli(root, bad, "--skip-invalid", "--json")
    assert skipped.returncode == 0, skipped.stderr
    data = json.loads(skipped.stdout)
    assert data["dataset"] == {**data["dataset"], "traces": 11, "invalid_skipped": 1}
    assert data["invalid_lines"][0].startswith(f"{bad}:{bad_line}: ")


@pytest.mark.parametrize(
    ("flags", "code", "says"),
    [
        (("--version", "v9"), 3, "no version 'v9' in"),
        (("--max-drop", "0.1"), 2, "--max-drop goes with --baseline"),
        (("--baseline", "v7"), 3, "no version 'v7'"),
    ],
)
def test_bad_flags(root: Path, dev: Path, flags: tuple[str, ...], code: int, says: str) -> None:
    assert_refused(eval_cli(root, dev, *flags, lm=f"{LMS}:stuck"), code, says)


def test_a_changed_node_runs_naive_and_says_so(root: Path, dev: Path, tmp_path: Path) -> None:
    source = Path(EXAMPLE).read_text()
    old = 'description="the part of the product that misbehaves"'  # in TechnicalIssue's make prompt only
    assert old in source
    drifted = tmp_path / "support_triage.py"
    drifted.write_text(source.replace(old, 'description="where the defect is"'))
    result = run_bae("eval", str(drifted), "--compiled", str(root), "--dataset", str(dev), "--lm", FEWSHOT,
                     "--no-log", "--json", "--naive")  # fmt: skip
    assert result.returncode == 0, result.stderr
    stale = "v1: TechnicalIssue (make): its prompt changed since compile: using a naive predictor (stale)"
    assert f"warning: {stale}" in result.stderr.splitlines()
    version, naive = json.loads(result.stdout)["columns"]
    assert version["stale"] == ["TechnicalIssue.make"] and naive["stale"] == []  # the naive graph has no predictors
    assert version["per_predictor"]["TechnicalIssue.make"] < 1.0  # without demos the model fills in lms.WRONG


def test_the_naive_graph_alone_needs_no_compiled_dir(dev: Path) -> None:
    result = bae.evaluate(EXAMPLE, dev, lm=lms.fewshot())
    (naive,) = result.columns
    assert (naive.name, naive.role, naive.version_dir, naive.recorded_score, naive.stale) == (
        "naive", "version", None, None, [])  # fmt: skip
    assert naive.score.score == pytest.approx(naive_score()) and naive.usage["calls"] == 2 * len(DEV)

    shown = run_bae("eval", EXAMPLE, "--dataset", str(dev), "--lm", FEWSHOT, "--no-log")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("\u2502")] for line in
                                              shown.stdout.splitlines()) if len(cells) == 2}  # fmt: skip
    assert rows["whole graph"] == [f"{naive_score():.3f}"] and rows["recorded at compile"] == ["-"]
    report = run_bae("eval", EXAMPLE, "--dataset", str(dev), "--lm", FEWSHOT, "--no-log", "--json")
    assert report.returncode == 0, report.stderr
    (column,) = json.loads(report.stdout)["columns"]
    assert (column["name"], column["path"], column["recorded_score"], column["stale"]) == ("naive", None, None, [])
    assert column["score"] == round(naive_score(), 4)


def test_an_lm_that_is_down_is_exit_4(root: Path, tmp_path: Path) -> None:
    dev = tmp_path / "dev.jsonl"
    dev.write_text(DEV[0] + "\n")
    result = eval_cli(root, dev, "--threads", "1", lm=f"{LMS}:down")
    assert result.returncode == 4, result.stderr
    assert result.stderr.splitlines()[-1].startswith("bae: error: ")


def test_ctrl_c_keeps_the_runs_that_finished(root: Path, tmp_path: Path) -> None:
    data, output, db = tmp_path / "all.jsonl", tmp_path / "out.jsonl", tmp_path / "runs.db"
    data.write_text(TRAIN.read_text())
    proc = bae_popen("eval", EXAMPLE, "--compiled", str(root), "--dataset", str(data), "--lm", f"{LMS}:sluggish",
                     "--threads", "1", "--output", str(output), "--log-db", str(db), "--json")  # fmt: skip

    def logged() -> int:
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.Error:
            return 0

    wait_for(lambda: logged() >= 3, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "bae: error: interrupted" and "Traceback" not in stderr
    report = json.loads(stdout)
    (column,) = report["columns"]
    assert report["interrupted"] and not column["complete"] and 3 <= column["traces"] < len(LINES)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == column["traces"] and all(line["score"] == 1.0 for line in lines)
    assert [line["source"] for line in lines] == [f"{data}:{n}" for n in range(1, len(lines) + 1)]


def test_the_example_dev_file_is_what_compile_holds_out() -> None:
    from bae.dataset import split

    _, held_out = split(load_dataset(TRAIN, load_graph(EXAMPLE).graph).traces, 0.25, 0)
    numbers = sorted(int(trace.source.rsplit(":", 1)[1]) for trace in held_out)
    assert EXAMPLE_DEV.read_text().splitlines() == [LINES[n - 1] for n in numbers]


def test_evaluate_is_exported_lazily() -> None:
    import subprocess
    import sys

    code = "import sys, bae; assert 'evaluate' in bae.__all__ and callable(bae.evaluate); print('dspy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
