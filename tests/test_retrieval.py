"""Similar-example demos (``--optimizer knn``): retrieval, the stored pool, and stratified demos."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import dspy
import pytest

from bae.compiler import CompileOptions, compile_graph
from bae.exceptions import BaeArtifactError
from bae.loader import load_graph
from bae.optimized_lm import OptimizedLM, open_version
from bae.optimizer import OptimizeSettings, stratified
from bae.predictors import CHOICE_FIELD
from bae.retrieval import DemoRetriever
from tests import lms
from tests.cli import EXAMPLE, TRAIN, bae

K = 4  # the demos knn retrieves here: not the default (8), so a k that ignored the setting would show
POOL = [
    {"text": "refund my duplicate invoice charge", "next_step": "BillingIssue"},
    {"text": "invoice shows the wrong amount", "next_step": "BillingIssue"},
    {"text": "card charged twice this month", "next_step": "BillingIssue"},
    {"text": "the app crashes when I open the camera", "next_step": "TechnicalIssue"},
    {"text": "api returns error 500 on every call", "next_step": "TechnicalIssue"},
    {"text": "cannot reset my password", "next_step": "AccountIssue"},
]


def test_the_most_similar_demos_come_last_and_every_call_agrees() -> None:
    retriever = DemoRetriever(POOL, ("text",), k=2)
    picked = retriever.select({"text": "please refund the duplicate charge on my invoice"})
    assert picked[-1] is POOL[0]  # the closest sits right before the question
    assert len(picked) == 2 and all(p["next_step"] == "BillingIssue" for p in picked)
    assert [retriever.select({"text": "please refund the duplicate charge on my invoice"}) for _ in range(3)] == [
        picked
    ] * 3


def test_the_nearest_examples_are_chosen_wherever_they_sit_in_the_pool() -> None:
    """The nearest examples here are not the pool's first ones, so taking the pool in order fails."""
    retriever = DemoRetriever(POOL, ("text",), k=2)
    assert retriever.select({"text": "the api keeps returning error 500 and the app crashes"}) == [POOL[3], POOL[4]]
    balanced = DemoRetriever(POOL, ("text",), k=3, label=CHOICE_FIELD)
    # billing's nearest is its last example; technical matches nothing (pool order breaks the tie)
    assert balanced.select({"text": "my card was charged twice"}) == [POOL[3], POOL[5], POOL[2]]


def test_balanced_selection_shows_every_option_closest_first_within_each() -> None:
    retriever = DemoRetriever(POOL, ("text",), k=3, label=CHOICE_FIELD)
    picked = retriever.select({"text": "refund the duplicate invoice charge"})
    assert Counter(p["next_step"] for p in picked) == {"BillingIssue": 1, "TechnicalIssue": 1, "AccountIssue": 1}
    assert picked[-1] is POOL[0]
    # a query like nothing in the pool still gets every option, in pool order
    unlike = retriever.select({"text": "zzz"})
    assert {p["next_step"] for p in unlike} == {"BillingIssue", "TechnicalIssue", "AccountIssue"}


def test_stratified_takes_the_options_in_turn() -> None:
    examples = [dspy.Example(**row).with_inputs("text") for row in POOL]
    order = [e[CHOICE_FIELD] for e in stratified(examples)]
    assert order == ["BillingIssue", "TechnicalIssue", "AccountIssue", "BillingIssue", "TechnicalIssue", "BillingIssue"]


def test_labeled_demos_of_a_choice_cover_every_option(tmp_path: Path) -> None:
    settings = OptimizeSettings(optimizer="labeled", max_labeled_demos=6)
    compile_graph(load_graph(EXAMPLE), lms.fewshot(), CompileOptions(trainset=TRAIN, out=tmp_path, settings=settings))
    choice = open_version(tmp_path, load_graph(EXAMPLE).graph).predictors[("Triage", "choice")]
    assert Counter(d[CHOICE_FIELD] for d in choice.demos) == {"BillingIssue": 2, "TechnicalIssue": 2, "AccountIssue": 2}


@pytest.fixture(scope="module")
def knn_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("knn") / "compiled"
    settings = OptimizeSettings(optimizer="knn", max_labeled_demos=K)
    compile_graph(load_graph(EXAMPLE), lms.fewshot(), CompileOptions(trainset=TRAIN, out=out, settings=settings))
    return out / "v1"


def test_knn_stores_its_pool_and_serves_similar_demos(knn_version: Path) -> None:
    manifest = json.loads((knn_version / "manifest.json").read_text())
    entry = manifest["files"]["nodes/Triage.choice.json"]
    assert entry["demos"] == K and entry["pool"] == entry["examples"] > K
    document = json.loads((knn_version / "nodes/Triage.choice.json").read_text())
    assert document["bae"]["retrieval"] == {"method": "bm25", "k": K, "balanced_on": CHOICE_FIELD}
    assert len(document["predictor"]["demos"]) == entry["pool"]
    prompts = json.loads((knn_version / "prompts.json").read_text())["Triage.choice"]
    assert f"{K} of" in prompts["note"] and len(prompts["messages"]) == 2  # static part: system + question

    choice = open_version(knn_version, load_graph(EXAMPLE).graph).predictors[("Triage", "choice")]
    gold = document["predictor"]["demos"][5]
    picked = choice.retriever.select({"text": gold["text"], "plan": gold["plan"]})
    assert len(picked) == K and picked[-1] == gold


def test_knn_runs_with_retrieved_demos_and_inspect_lists_it(knn_version: Path) -> None:
    result = bae("inspect", str(knn_version), "--graph", EXAMPLE, "--json")
    assert result.returncode == 0, result.stderr
    notes = {(row["node"], row["kind"]): row["note"] for row in json.loads(result.stdout)["nodes"]}
    assert notes[("Triage", "choice")].startswith(f"knn k={K} pool=")
    loaded = load_graph(EXAMPLE)
    lm = lms.fewshot()  # answers right only when the prompt carries demos
    graph = open_version(knn_version, loaded.graph)
    backend = OptimizedLM(graph.predictors, model=lm)
    start = loaded.graph.start(customer_email="ana@northwind.io", text=lms.TRACES[0][0]["fields"]["text"])
    run = loaded.graph.run(start, lm=backend, **loaded.deps)
    assert run.path[-1] == lms.TRACES[0][-1]["node"]
    assert [call.demos for call in lm.calls] == [K, K]


def _rewrite(version: Path, rel: str, change) -> None:
    path = version / rel
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"][rel]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "retrieval", [{"method": "bm25", "k": 0}, {"method": "embeddings", "k": 4}, {"method": "bm25", "k": "4"}, 7]
)
def test_malformed_retrieval_settings_are_refused(knn_version: Path, tmp_path: Path, retrieval: object) -> None:
    import shutil

    version = tmp_path / "v1"
    shutil.copytree(knn_version, version)
    _rewrite(version, "nodes/Triage.choice.json", lambda d: d["bae"].__setitem__("retrieval", retrieval))
    with pytest.raises(BaeArtifactError, match="retrieval"):
        open_version(version, load_graph(EXAMPLE).graph)
    assert bae("inspect", str(version), "--graph", EXAMPLE).returncode == 3


def test_a_tampered_pool_is_refused(knn_version: Path, tmp_path: Path) -> None:
    import shutil

    version = tmp_path / "v1"
    shutil.copytree(knn_version, version)
    path = version / "nodes/Triage.choice.json"
    document = json.loads(path.read_text())
    document["predictor"]["demos"][0][CHOICE_FIELD] = "AccountIssue"  # a poisoned demo, checksum not updated
    path.write_text(json.dumps(document))
    with pytest.raises(BaeArtifactError, match="checksum"):
        open_version(version, load_graph(EXAMPLE).graph)


def test_a_drifted_node_does_not_get_its_stale_pool(knn_version: Path, tmp_path: Path) -> None:
    """The Triage docstring changed since compile: its pool (tickets labeled under the old meaning) is not
    used; the choice runs naive with no demos, and the untouched make predictors keep their retrieval."""
    old_doc = '"""Route the ticket to the support queue whose team can resolve it."""'
    drifted = tmp_path / "support_triage.py"
    drifted.write_text(Path(EXAMPLE).read_text().replace(old_doc, '"""Send the ticket to one queue."""'))
    loaded = load_graph(str(drifted))
    graph = open_version(knn_version, loaded.graph)
    assert ("Triage", "choice") in graph.stale and ("Triage", "choice") not in graph.predictors
    lm = lms.fewshot()
    start = loaded.graph.start(customer_email="ana@northwind.io", text=lms.TRACES[0][0]["fields"]["text"])
    run = loaded.graph.run(start, lm=OptimizedLM(graph.predictors, stale=graph.stale, model=lm), **loaded.deps)
    sources_and_demos = [(call.source, scripted.demos) for call, scripted in zip(run.calls, lm.calls, strict=True)]
    assert sources_and_demos[0] == ("stale", 0)
    assert sources_and_demos[1:] == [("optimized", K)] * (len(run.calls) - 1)
