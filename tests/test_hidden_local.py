"""Hidden-state decisions on the real embedded model (issue 24): readings are deterministic, the committed
version decides its closed fields from them with no LM request, and another model file falls back to demos.

The same version with any other LM uses its demos: ``test_a_scripted_lm_gets_the_demos_not_the_anchors``
needs no model."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from bae.artifacts import MAX_NODE_FILE_BYTES
from bae.dataset import load_dataset
from bae.decisions import closed_decisions, read
from bae.loader import load_graph
from bae.observe import Observer
from bae.optimized_lm import open_version
from bae.result import CallRecord
from bae.testing import ScriptedLM
from tests.cli import EXAMPLE, ROOT, TRAIN, bae

try:
    import llama_cpp  # noqa: F401

    HAS_LOCAL_EXTRA = True
except ImportError:
    HAS_LOCAL_EXTRA = False

needs_model = pytest.mark.skipif(not HAS_LOCAL_EXTRA, reason="needs the local extra: pip install -e '.[local]'")
COMPILED = ROOT / "compiled"
BILLING = {
    "customer_email": "ana@northwind.io",
    "text": "I was charged twice for invoice INV-2231, please refund the duplicate.",
}


def _tickets(n: int) -> list[Any]:
    graph = load_graph(EXAMPLE)
    return [trace.nodes[0] for trace in load_dataset(TRAIN, graph.graph).traces[:n]]


def _hidden_files() -> dict[str, dict[str, Any]]:
    manifest = json.loads((COMPILED / "v1" / "manifest.json").read_text())
    return {rel: entry for rel, entry in manifest["files"].items() if "model_sha256" in entry}


@pytest.fixture(scope="module")
def model() -> Any:
    from bae.local.model import load_model, resolve_model

    return load_model(resolve_model(None)[0])


@pytest.mark.local
@needs_model
def test_readings_are_the_same_in_any_order_with_the_cache_on_or_off_and_on_two_threads(model: Any) -> None:
    from bae.local.decoding import PrefixCache

    examples = load_graph(EXAMPLE).graph
    triage, billing = examples.node("Triage"), examples.node("BillingIssue")
    assert triage is not None and billing is not None
    decisions = closed_decisions(triage, "choice") + closed_decisions(billing, "make")
    inputs = [{"text": node.text, "plan": "pro"} for node in _tickets(3)]
    work = [(d, i) for i in inputs for d in decisions]

    def readings(order: list[Any], cache: Any) -> dict[tuple[str, str], bytes]:
        found = {}
        for decision, given in order:
            with model.lock:
                found[(decision.field, given["text"])] = read(model, decision, given, cache).vector.tobytes()
        return found

    first = readings(work, PrefixCache())
    assert readings(work, PrefixCache()) == first
    assert readings(work, None) == first
    assert readings(work[::-1], PrefixCache()) == first
    shared = PrefixCache()
    halves: list[dict[tuple[str, str], bytes]] = [{}, {}]
    threads = [threading.Thread(target=lambda i=i: halves[i].update(readings(work[i::2], shared))) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {**halves[0], **halves[1]} == first


def _run(path: Path, lm: Any, warnings: list[str] | None = None) -> tuple[Any, list[CallRecord]]:
    graph = load_graph(EXAMPLE)
    version = open_version(path, graph)
    backend = version.backend(model=lm, **({"warn": warnings.append} if warnings is not None else {}))
    calls: list[CallRecord] = []

    class Calls(Observer):
        def lm_called(self, run: Any, record: CallRecord) -> None:
            calls.append(record)

    result = graph.graph.run(graph.graph.start(**BILLING), lm=backend, observers=[Calls()], **graph.deps)
    return result, calls


@pytest.mark.local
@needs_model
def test_the_committed_version_decides_closed_fields_from_hidden_states_with_no_lm_request() -> None:
    """Each predictor whose every closed field has anchors is answered by reading the model once per field:
    the record says ``optimized`` and shows no completion tokens (no DSPy request, nothing decoded). The
    README's ticket still comes back BillingIssue with a refund, with the prefix cache on or off."""
    from bae.local.engine import local_lm

    assert _hidden_files(), "the committed version holds no hidden-state decisions"
    result, calls = _run(COMPILED, local_lm())
    final = result.trace[-1]
    assert type(final).__name__ == "BillingIssue" and final.refund_requested is True
    assert calls and all(c.source == "optimized" for c in calls)
    by_key = {f"{c.node}.{c.kind}": c for c in calls}
    for rel, entry in _hidden_files().items():
        name = f"{entry['node']}.{entry['kind']}"
        every_field_hidden = all(d["method"] != "demos" for d in entry["decisions"].values())
        if name in by_key and every_field_hidden:
            assert by_key[name].completion_tokens == 0, (rel, by_key[name])
    uncached, _ = _run(COMPILED, local_lm(prefix_cache=False))
    assert [n.model_dump() for n in uncached.trace] == [n.model_dump() for n in result.trace]


@pytest.mark.local
@needs_model
def test_another_model_file_makes_the_anchors_stale_and_the_demos_decide(tmp_path: Path) -> None:
    """A version whose anchors were read with another GGUF (its recorded sha256 differs): said once, and the
    predictor's demos answer through a DSPy request instead."""
    from bae.local.engine import local_lm

    root = tmp_path / "compiled"
    shutil.copytree(COMPILED, root, ignore=shutil.ignore_patterns(".lock"))
    manifest_path = root / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    choice = "nodes/Triage.choice.json"
    assert choice in _hidden_files()
    document = json.loads((root / "v1" / choice).read_text())
    document["decisions"]["model_sha256"] = "0" * 64
    (root / "v1" / choice).write_text(json.dumps(document))
    import hashlib

    manifest["files"][choice]["sha256"] = hashlib.sha256((root / "v1" / choice).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))

    warnings: list[str] = []
    lm = local_lm()
    graph = load_graph(EXAMPLE)
    backend = open_version(root, graph).backend(model=lm, warn=warnings.append)
    for _ in range(2):
        result = graph.graph.run(graph.graph.start(**BILLING), lm=backend, **graph.deps)
    stale = [w for w in warnings if "another model file" in w]
    assert len(stale) == 1 and "Triage (choice)" in stale[0] and "demos" in stale[0]
    decided = [c for c in result.calls if c.node == "Triage"]
    assert decided and decided[0].completion_tokens, "the demos path sends a DSPy request and decodes an answer"


def test_a_scripted_lm_gets_the_demos_not_the_anchors() -> None:
    """With any LM but the embedded one, a version with anchors answers through its predictors' demos: a
    scripted LM that routes every ticket to AccountIssue is obeyed, and is asked with demos."""
    assert _hidden_files()
    lm = ScriptedLM(
        choose={"Triage": "AccountIssue"}, make={"AccountIssue": {"priority": "low", "action": "change email"}}
    )
    result, calls = _run(COMPILED, lm)
    assert type(result.trace[-1]).__name__ == "AccountIssue"
    assert any(call.node == "Triage" and call.demos > 0 for call in lm.calls)
    assert all(c.source == "optimized" for c in calls)


def test_inspect_says_which_path_each_node_takes_with_which_lm() -> None:
    ran = bae("inspect", str(COMPILED), "--json")
    assert ran.returncode == 0, ran.stderr
    rows = {f"{r['node']}.{r['kind']}": r for r in json.loads(ran.stdout)["nodes"]}
    hidden = {f"{e['node']}.{e['kind']}": e for e in _hidden_files().values()}
    assert hidden
    for name, entry in hidden.items():
        row = rows[name]
        assert row["model_sha256"] == entry["model_sha256"]
        assert row["decisions"] == entry["decisions"]
        if any(d["method"] != "demos" for d in entry["decisions"].values()):
            assert f"embedded model sha256 {entry['model_sha256'][:12]}: hidden state" in row["path"]
        assert row["path"].endswith("any other LM: demos") or row["path"] == "demos with any LM"
    text = bae("inspect", str(COMPILED))
    assert "hidden state" in text.stdout and "any other LM: demos" in text.stdout


def test_the_committed_node_files_keep_to_the_size_budget() -> None:
    for path in (COMPILED / "v1" / "nodes").glob("*.json"):
        assert path.stat().st_size <= MAX_NODE_FILE_BYTES, path
