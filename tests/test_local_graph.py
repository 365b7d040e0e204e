"""The example graph on the real embedded model: make, decide, a small compile end to end, and
``bae run`` on it ending clean.

These assert behaviour and parseability, never a particular answer of the 270M base model.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from bae.compiler import CompileOptions, compile_graph
from bae.dataset import load_dataset
from bae.dspy_backend import DSPyBackend
from bae.loader import load_graph
from bae.optimized_lm import CompiledGraph, open_version
from bae.optimizer import OptimizeSettings
from tests.cli import EXAMPLE, ROOT, TRAIN, bae_process
from tests.test_local_lm import HAS_LOCAL_EXTRA

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(not HAS_LOCAL_EXTRA, reason="needs the local extra: pip install -e '.[local]'"),
]


@pytest.fixture(scope="module")
def lm():
    from bae.local.engine import local_lm

    return local_lm()


@pytest.fixture(scope="module")
def example():
    return load_graph(EXAMPLE)


def triage(example) -> object:
    triage_cls = example.graph.node("Triage")
    return triage_cls(text="The app crashes every time I open the camera screen on Android 14.", plan="pro")


def test_make_one_node(lm, example) -> None:
    billing = example.graph.node("BillingIssue")
    made = DSPyBackend(lm).make(triage(example), billing)
    assert isinstance(made, billing)
    assert made.priority in typing.get_args(billing.model_fields["priority"].annotation)
    assert isinstance(made.refund_requested, bool)
    assert made.plan == "pro"  # Context carried from upstream, not generated


def test_decide_once(lm, example) -> None:
    made = DSPyBackend(lm).decide(triage(example))
    assert type(made).__name__ in {"BillingIssue", "TechnicalIssue", "AccountIssue"}


def test_small_compile_loads_and_runs_optimized(lm, example, tmp_path: Path) -> None:
    traces = TRAIN.read_text().splitlines()
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(traces[:24]) + "\n")
    dev.write_text("\n".join(traces[-3:]) + "\n")
    settings = OptimizeSettings(optimizer="labeled", max_labeled_demos=2, min_examples=2)
    options = CompileOptions(trainset=train, devset=dev, out=tmp_path / "compiled", settings=settings)
    report = compile_graph(example, lm, options)
    assert 0.0 <= report.naive.score <= 1.0 and 0.0 <= report.optimized.score <= 1.0
    assert report.manifest["lm"]["model"] == "local/gemma-3-270m"
    loaded = open_version(tmp_path / "compiled", example.graph)
    assert loaded.predictors and all(len(p.demos) == 2 for p in loaded.predictors.values())
    start = load_dataset(dev, example.graph).traces[0].nodes[0]
    result = CompiledGraph.load(example.graph, tmp_path / "compiled").run(start, model=lm, **example.deps)
    assert result.path[:2] == ["Ticket", "Triage"] and len(result.path) == 3
    # Where the compile left a predictor naive (too few examples of a queue in 24 traces), its call is naive.
    assert [c.source for c in result.calls] == [
        "optimized" if (c.node, c.kind) in loaded.predictors else "naive" for c in result.calls
    ]
    assert result.calls[0].source == "optimized"  # the choice had examples of every queue


TICKET = {"customer_email": "ana@northwind.io", "text": "I was charged twice for invoice INV-2231, please refund it."}


def test_a_run_on_the_embedded_model_ends_without_a_traceback(tmp_path: Path) -> None:
    """llama-cpp-python frees a model in ``__del__``, which at interpreter shutdown runs after the
    globals it calls are gone: every command that loaded the model printed a traceback on exit
    (``Exception ignored in: <function Llama.__del__ ...>``) unless bae closes it first: a real process."""
    args = ("--compiled", str(ROOT / "compiled"), "--lm", "local", "--no-log", "--input", json.dumps(TICKET))
    result = bae_process("run", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trace: Ticket -> Triage -> " in result.stdout
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
