"""Compile: examples from gold traces, optimizers, versioned artifacts, and the inspect gate."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from bae import artifacts
from bae.compiler import CompileOptions, compile_graph
from bae.dataset import load_dataset, split
from bae.examples import trace_to_examples
from bae.loader import load_graph
from bae.optimized_lm import CompiledGraph, open_version
from bae.optimizer import OptimizeSettings
from tests import lms
from tests.cli import EXAMPLE, LMS, TRAIN, bae, bae_popen
from tests.workspace import assert_refused


@pytest.fixture
def compiled(compiled_example: Path) -> Path:
    """The example compiled once with a model that only answers well given few-shot demos (``conftest``):
    read only, ``copy_of`` it to change it."""
    return compiled_example


def test_trace_to_examples_makes_one_example_per_step_and_choice() -> None:
    loaded = load_graph(EXAMPLE)
    trace = load_dataset(TRAIN, loaded.graph).traces[0].nodes
    examples = trace_to_examples(trace)
    queue = type(trace[2]).__name__
    assert set(examples) == {("Triage", "choice"), (queue, "make")}
    [choice] = examples[("Triage", "choice")]
    assert set(choice.inputs()) == {"text", "plan"} and choice.next_step == queue
    [make] = examples[(queue, "make")]
    assert make.inputs().toDict() == {"text": trace[0].text, "plan": trace[1].plan}  # resolved as at run time
    assert "priority" in make.labels()


def test_layout_manifest_checksums_and_versions(compiled: Path) -> None:
    version = compiled / "v1"
    assert sorted(p.relative_to(version).as_posix() for p in version.rglob("*.json")) == [
        "manifest.json",
        "nodes/AccountIssue.json",
        "nodes/BillingIssue.json",
        "nodes/TechnicalIssue.json",
        "nodes/Triage.choice.json",
        "prompts.json",
    ]
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["version"] == "v1"
    for key in ("bae_version", "dspy_version", "python_version", "created_at", "seed", "notes"):
        assert key in manifest
    assert manifest["graph"]["start"] == "Ticket" and manifest["graph"]["fingerprint"]
    assert manifest["optimizer"]["name"] == "knn"
    assert manifest["dataset"]["traces"] == manifest["dataset"]["train"] + manifest["dataset"]["dev"]
    assert manifest["dataset"]["sha256"] == artifacts.sha256_file(TRAIN)
    assert manifest["lm"] == {"model": "bae/scripted"}
    for rel, entry in manifest["files"].items():
        assert artifacts.sha256_file(version / rel) == entry["sha256"]
    assert manifest["files"]["nodes/Triage.choice.json"]["kind"] == "choice"
    versions = json.loads((compiled / "versions.json").read_text())
    assert versions["active"] == "v1" and [v["version"] for v in versions["versions"]] == ["v1"]
    assert versions["versions"][0]["notes"] == "first"


def test_scores_show_what_demos_buy(compiled: Path) -> None:
    scores = json.loads((compiled / "v1" / "manifest.json").read_text())["scores"]
    # the scripted model answers right only with demos in the prompt: naive fails, optimized succeeds
    assert scores["naive_path_accuracy"] < 0.5 and scores["naive"] < 0.7
    assert scores["optimized"] == 1.0
    assert scores["optimized_path_accuracy"] == 1.0


def test_confusion_and_naive_score_count_exactly_the_dev_runs(compiled: Path) -> None:
    manifest = json.loads((compiled / "v1" / "manifest.json").read_text())
    _, dev = split(load_dataset(TRAIN, load_graph(EXAMPLE).graph).traces, 0.25, 0)
    assert manifest["dataset"]["dev"] == len(dev)
    queues = Counter(trace.path[-1] for trace in dev)
    # without demos the scripted model routes every ticket to billing and fills in lms.WRONG
    assert manifest["confusion"]["naive"] == {
        "Triage.choice": {queue: {"BillingIssue": queues[queue]} for queue in lms.QUEUES if queues[queue]}
    }
    assert manifest["confusion"]["optimized"] == {
        "Triage.choice": {queue: {queue: queues[queue]} for queue in lms.QUEUES if queues[queue]}
    }
    # only the LM step counts: the choice, and BillingIssue's two fields; Ticket -> Triage is custom logic
    billing = [trace.nodes[-1] for trace in dev if trace.path[-1] == "BillingIssue"]
    earned = sum((1 + (node.priority == "low") + (node.refund_requested is False)) / 3 for node in billing)
    scores = manifest["scores"]
    assert scores["naive"] == pytest.approx(earned / len(dev), abs=1e-4)
    assert scores["naive_path_accuracy"] == pytest.approx(len(billing) / len(dev), abs=1e-4)


def test_demos_reach_loaded_predictors_and_the_lm(compiled: Path) -> None:
    loaded = load_graph(EXAMPLE)
    version = open_version(compiled, loaded.graph)
    assert set(version.predictors) == set(loaded.graph.predictor_keys())
    assert all(len(p.demos) > 0 for p in version.predictors.values())
    lm = lms.fewshot()
    trace = load_dataset(TRAIN, loaded.graph).traces[5]
    result = CompiledGraph.load(loaded.graph, compiled).run(trace.nodes[0], model=lm, **loaded.deps)
    assert result.path == trace.path
    assert all(call.demos > 0 for call in lm.calls)
    assert {c.source for c in result.calls} == {"optimized"}


def test_prompts_json_is_plain_messages(compiled: Path) -> None:
    prompts = json.loads((compiled / "v1" / "prompts.json").read_text())
    choice = prompts["Triage.choice"]
    assert choice["inputs"] == ["text", "plan"] and choice["outputs"] == ["next_step"]
    assert choice["messages"][0]["role"] == "system"
    assert choice["messages"][-1]["content"].count("{text}") == 1


def test_inspect_healthy_json(compiled: Path) -> None:
    result = bae("inspect", str(compiled), "--graph", EXAMPLE, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] and report["version"] == "v1"
    assert {(n["node"], n["status"]) for n in report["nodes"]} == {
        ("Triage", "optimized"),
        ("BillingIssue", "optimized"),
        ("TechnicalIssue", "optimized"),
        ("AccountIssue", "optimized"),
    }
    assert bae("inspect", str(compiled), "--min-score", "1.01").returncode == 1


def copy_of(compiled: Path, tmp_path: Path) -> Path:
    target = tmp_path / "compiled"
    shutil.copytree(compiled, target)
    return target


def drifted_graph(tmp_path: Path, old: str, new: str) -> str:
    source = Path(EXAMPLE).read_text()
    assert old in source
    path = tmp_path / "support_triage.py"
    path.write_text(source.replace(old, new))
    return str(path)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    refund_requested: bool", "    wants_refund: bool"),  # renamed
        ("    refund_requested: bool", "    refund_requested: int"),  # retyped
        ('    priority: Priority = Field(description="how fast the billing team must answer")\n',
         '    priority: Priority = Field(description="how fast the billing team must answer")\n    note: str\n'),
    ],
    ids=["renamed", "retyped", "added"],
)  # fmt: skip
def test_drift_makes_the_node_stale(compiled: Path, tmp_path: Path, old: str, new: str) -> None:
    graph = drifted_graph(tmp_path, old, new)
    result = bae("inspect", str(compiled), "--graph", graph, "--json")
    assert result.returncode == 1, result.stderr
    statuses = {(n["node"], n["kind"]): n["status"] for n in json.loads(result.stdout)["nodes"]}
    assert statuses[("BillingIssue", "make")] == "stale"
    assert statuses[("TechnicalIssue", "make")] == "optimized"
    loaded = open_version(compiled, load_graph(graph).graph)
    assert ("BillingIssue", "make") in loaded.stale and ("BillingIssue", "make") not in loaded.predictors


BILLING_DOC = '"""A problem with charges, invoices, payment methods or refunds."""'
PREDICTORS = {("Triage", "choice"), ("BillingIssue", "make"), ("TechnicalIssue", "make"), ("AccountIssue", "make")}


@pytest.mark.parametrize(
    ("old", "new", "stale"),
    [
        # an option of the choice: its docstring is in the choice's prompt (and in its own make prompt)
        (BILLING_DOC, '"""Anything about money: charges, invoices, refunds, and plan upgrades."""',
         {("Triage", "choice"), ("BillingIssue", "make")}),
        # an option's field: in its make prompt only, the choice shows options by name and docstring
        ("    refund_requested: bool", "    wants_refund: bool", {("BillingIssue", "make")}),
        # the choice's own node
        ('"""Route the ticket to the support queue whose team can resolve it."""', '"""Pick one queue."""',
         {("Triage", "choice")}),
        # no predictor's prompt shows the start node's docstring
        ('"""A support ticket as it arrives in the inbox."""', '"""An email to support."""', set()),
    ],
    ids=["option-docstring", "option-field", "own-docstring", "unrelated"],
)  # fmt: skip
def test_load_inspect_and_graph_agree_on_what_is_stale(
    compiled: Path, tmp_path: Path, old: str, new: str, stale: set[tuple[str, str]]
) -> None:
    """One decision (``bae.freshness``) behind loading, ``bae inspect`` and ``bae graph --compiled``: a choice
    is stale once what its prompt shows of an option changes, and only what a prompt shows counts."""
    graph = drifted_graph(tmp_path, old, new)
    loaded = open_version(compiled, load_graph(graph).graph)
    assert loaded.stale == stale and set(loaded.predictors) == PREDICTORS - stale
    inspected = bae("inspect", str(compiled), "--graph", graph, "--json")
    assert inspected.returncode == (1 if stale else 0), inspected.stderr
    statuses = {(n["node"], n["kind"]): n["status"] for n in json.loads(inspected.stdout)["nodes"]}
    assert statuses == {key: "stale" if key in stale else "optimized" for key in PREDICTORS}
    shown = json.loads(bae("graph", graph, "--compiled", str(compiled), "--json").stdout)
    assert {(n["node"], kind): status for n in shown["nodes"] for kind, status in n["predictors"].items()} == statuses
    tree = bae("graph", graph, "--compiled", str(compiled)).stdout
    marked = {(line.lstrip(" │├└─").split()[0], kind) for line in tree.splitlines()
              for kind in ("make", "choice") if f"{kind} stale" in line}  # fmt: skip
    assert marked == stale


def test_flipped_byte_is_an_artifact_error(compiled: Path, tmp_path: Path) -> None:
    root = copy_of(compiled, tmp_path)
    node_file = root / "v1" / "nodes" / "BillingIssue.json"
    data = bytearray(node_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    node_file.write_bytes(bytes(data))
    result = bae("inspect", str(root))
    assert result.returncode == 3
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr


def test_truncated_manifest_is_an_artifact_error(compiled: Path, tmp_path: Path) -> None:
    root = copy_of(compiled, tmp_path)
    manifest = root / "v1" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    result = bae("inspect", str(root))
    assert result.returncode == 3
    assert result.stderr.startswith("bae: error: manifest unreadable") and "Traceback" not in result.stderr


def test_missing_dir_and_node_no_longer_in_graph(compiled: Path, tmp_path: Path) -> None:
    assert bae("inspect", str(tmp_path / "nope")).returncode == 3
    graph = drifted_graph(tmp_path, "class AccountIssue(Node):", "class AccountRequest(Node):")
    graph_text = Path(graph).read_text().replace("| AccountIssue:", "| AccountRequest:")
    Path(graph).write_text(graph_text)
    report = json.loads(bae("inspect", str(compiled), "--graph", graph, "--json").stdout)
    statuses = {(n["node"], n["status"]) for n in report["nodes"]}
    assert ("AccountIssue", "missing") in statuses and ("AccountRequest", "naive") in statuses


def test_cli_compile_writes_the_next_version_and_reports_json(compiled: Path, tmp_path: Path) -> None:
    root = copy_of(compiled, tmp_path)
    result = bae("compile", EXAMPLE, "--out", str(root), "--lm", f"{LMS}:oracle", "--optimizer", "labeled", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["version"] == "v2" and Path(report["path"]) == root / "v2"
    assert {r["status"] for r in report["predictors"]} == {"optimized"}
    for matrices in report["confusion"].values():  # the oracle always routes right
        assert all(set(row) == {gold} for gold, row in matrices["Triage.choice"].items())
    assert json.loads((root / "versions.json").read_text())["active"] == "v2"
    result = bae("compile", EXAMPLE, "--out", str(root), "--lm", f"{LMS}:oracle", "--no-activate", "--json")
    assert json.loads(result.stdout)["version"] == "v3"
    assert json.loads((root / "versions.json").read_text())["active"] == "v2"


def test_cli_compile_prints_a_confusion_table_per_choice_predictor(tmp_path: Path) -> None:
    lines = TRAIN.read_text().splitlines()  # sorted by queue: billing, technical, account
    held = lines[:3] + lines[40:45] + lines[-4:]
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(line for line in lines if line not in held) + "\n")
    dev.write_text("\n".join(held) + "\n")
    queues = Counter(json.loads(line)["trace"][-1]["node"] for line in held)
    assert queues == {"BillingIssue": 3, "TechnicalIssue": 5, "AccountIssue": 4}
    result = bae("compile", EXAMPLE, "--trainset", str(train), "--devset", str(dev), "--out", str(tmp_path / "c"),
                 "--lm", f"{LMS}:fewshot", "--optimizer", "labeled")  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.index("dev score (whole graph") < text.index("Triage.choice on dev")
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("\u2502")]
        if len(cells) == 4 and cells[0] in lms.QUEUES:
            rows[cells[0]] = cells[1:]
    # columns: every queue Triage may choose, in its order; naive routes all to billing, optimized all right
    assert rows == {
        queue: [f"{queues[queue] if other == 'BillingIssue' else 0} -> {queues[queue] if other == queue else 0}"
                for other in lms.QUEUES]
        for queue in lms.QUEUES if queues[queue]
    }  # fmt: skip


def test_too_few_examples_stay_naive_and_say_so(tmp_path: Path) -> None:
    lines = TRAIN.read_text().splitlines()
    account = [line for line in lines if '"AccountIssue"' in line][:2]
    others = [line for line in lines if '"AccountIssue"' not in line][:30]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(others + account) + "\n")
    result = bae("compile", EXAMPLE, "--trainset", str(small), "--out", str(tmp_path / "c"), "--lm",
                 f"{LMS}:oracle", "--devset", str(small), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {(r["node"], r["kind"]): r for r in json.loads(result.stdout)["predictors"]}
    assert rows[("AccountIssue", "make")]["status"] == "naive"
    assert "2 examples (< 3)" in rows[("AccountIssue", "make")]["reason"]
    assert bae("inspect", str(tmp_path / "c"), "--graph", EXAMPLE).returncode == 1  # a naive node fails the gate


def test_bad_dataset_lines_report_file_and_line(tmp_path: Path) -> None:
    lines = TRAIN.read_text().splitlines()[:12]
    lines[3] = lines[3].replace('"node": "Triage"', '"node": "Nope"')
    lines[6] = "{not json"
    lines[8] = lines[8].replace('"priority": "', '"priority": "ultra-')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    result = bae("compile", EXAMPLE, "--trainset", str(bad), "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle")
    assert result.returncode == 2
    assert f"{bad}:4: step 2: unknown node 'Nope'" in result.stderr
    assert not (tmp_path / "c").exists()
    result = bae("compile", EXAMPLE, "--trainset", str(bad), "--out", str(tmp_path / "c"), "--lm",
                 f"{LMS}:oracle", "--skip-invalid", "--json", "--min-examples", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    invalid = json.loads(result.stdout)["invalid_lines"]
    assert [line.split(": ")[0] for line in invalid] == [f"{bad}:4", f"{bad}:7", f"{bad}:9"]
    assert "field priority" in invalid[2]


def test_non_edge_step_is_reported(tmp_path: Path) -> None:
    line = TRAIN.read_text().splitlines()[0]
    record = json.loads(line)
    record["trace"] = [record["trace"][0], record["trace"][2]]  # Ticket -> queue skips Triage
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    result = bae("compile", EXAMPLE, "--trainset", str(bad), "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle")
    assert result.returncode == 2 and "is not an edge of the graph" in result.stderr


def test_interrupted_compile_leaves_no_version(tmp_path: Path) -> None:
    out = tmp_path / "c"
    result = bae("compile", EXAMPLE, "--out", str(out), "--lm", f"{LMS}:interrupting")
    assert result.returncode == 130, result.stderr
    assert not list(out.glob("v*")) and not list(out.glob(".building-*"))


def test_concurrent_compiles_get_distinct_versions(tmp_path: Path) -> None:
    out = tmp_path / "c"
    args = ("compile", EXAMPLE, "--out", str(out), "--lm", f"{LMS}:slow", "--optimizer", "labeled", "--json")
    first, second = bae_popen(*args), bae_popen(*args)
    reports = []
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        reports.append(json.loads(stdout)["version"])
    assert sorted(reports) == ["v1", "v2"]
    versions = json.loads((out / "versions.json").read_text())
    assert sorted(v["version"] for v in versions["versions"]) == ["v1", "v2"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--optimizer", "annealing"), "unknown --optimizer 'annealing'"),
        (("--optimizer", "gepa"), "needs --reflection-lm"),
        (("--dev-split", "1.5"), "--dev-split must be between 0 and 1"),
        (("--metric", "nowhere"), "--metric must be given as module:function"),
    ],
)
def test_bad_compile_flags_are_usage_errors(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    result = bae("compile", EXAMPLE, "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle", *flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_mipro_without_optuna_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """optuna is hidden from the import system (None in sys.modules: ``import optuna`` raises
    ImportError), so this runs where the optimizers extra is installed too."""
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = bae("compile", EXAMPLE, "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle", "--optimizer", "mipro")
    assert_refused(result, 2, "--optimizer mipro needs optuna: pip install 'bae[optimizers]'")
    assert not (tmp_path / "c").exists()


def test_settings_are_recorded_without_secrets(compiled: Path) -> None:
    text = (compiled / "v1" / "manifest.json").read_text()
    params = json.loads(text)["optimizer"]["params"]
    assert params["max_demos"] == OptimizeSettings().max_demos
    assert "api_key" not in text and "api_base" not in text


def test_compile_is_deterministic_for_a_fixed_seed(tmp_path: Path) -> None:
    loaded = load_graph(EXAMPLE)
    texts = []
    for name in ("a", "b"):
        compile_graph(loaded, lms.fewshot(), CompileOptions(trainset=TRAIN, out=tmp_path / name))
        texts.append({p.name: p.read_text() for p in (tmp_path / name / "v1" / "nodes").iterdir()})
    assert texts[0] == texts[1]


def test_random_search_and_a_user_metric(tmp_path: Path) -> None:
    result = bae("compile", EXAMPLE, "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle", "--optimizer",
                 "random-search", "--metric", f"{LMS}:exact_metric", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {r["status"] for r in json.loads(result.stdout)["predictors"]} == {"optimized"}
    manifest = json.loads((tmp_path / "c" / "v1" / "manifest.json").read_text())
    assert manifest["optimizer"] == {"name": "random-search", "params": manifest["optimizer"]["params"]}
    assert manifest["optimizer"]["params"]["metric"] == "exact_metric"


def test_inspect_prompts_shows_rendered_messages(compiled: Path) -> None:
    result = bae("inspect", str(compiled), "--prompts")
    assert result.returncode == 0, result.stderr
    assert "Triage.choice" in result.stdout and "{text}" in result.stdout


@pytest.mark.parametrize("optimizer", ["bootstrap", "random-search"])  # random-search calls from worker threads
def test_the_manifest_records_every_lm_call_and_its_tokens(tmp_path: Path, optimizer: str) -> None:
    lm = lms.oracle()
    settings = OptimizeSettings(optimizer=optimizer, num_threads=2, candidates=2)
    report = compile_graph(load_graph(EXAMPLE), lm, CompileOptions(trainset=TRAIN, out=tmp_path, settings=settings))
    usage = json.loads((report.version_dir / "manifest.json").read_text())["usage"]
    dev = report.manifest["dataset"]["dev"]
    assert usage["naive_dev"]["calls"] == usage["optimized_dev"]["calls"] == 2 * dev  # a choice and a make per run
    assert usage["optimize"]["calls"] > 0
    assert sum(stage["calls"] for stage in usage.values()) == len(lm.calls)
    assert all(stage["prompt_tokens"] > stage["completion_tokens"] > 0 for stage in usage.values())
    assert report.as_dict()["usage"] == usage
