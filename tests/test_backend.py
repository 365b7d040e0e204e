"""The DSPy backend: real signatures and adapters, self-correction, retries, usage records."""

from __future__ import annotations

import typing
from typing import Literal

import dspy
import pytest

from bae import BaeInputError, BaeLMError, BaeParseError, Graph
from bae.dspy_backend import DSPyBackend
from bae.lm_failures import is_transient
from bae.lm_specs import default_lm
from bae.loader import load_graph
from bae.predictors import CHOICE_FIELD, FEEDBACK_FIELD, choice_signature, node_to_signature
from bae.testing import ScriptedLM
from tests import graphs as g
from tests.cli import EXAMPLE, LMS
from tests.runs import CallLog


def test_make_signature_has_context_inputs_and_typed_outputs() -> None:
    sig = node_to_signature(g.Classify)
    assert list(sig.input_fields) == ["question"]
    assert list(sig.output_fields) == ["topic"]
    assert sig.output_fields["topic"].annotation == Literal["math", "history", "other"]
    assert sig.input_fields["question"].json_schema_extra["desc"] == "the customer's question"
    assert sig.instructions.startswith("Classify. Classify the request so the right desk answers it.")
    math = node_to_signature(g.MathAnswer)
    assert math.output_fields["answer"].annotation is int  # real types, no JSON-in-a-string
    assert math.instructions.startswith("Math Answer.")


def test_choice_signature_offers_successor_names_and_end() -> None:
    sig = choice_signature(g.HistoryAnswer)
    assert list(sig.input_fields) == ["question", "answer"]
    assert typing.get_args(sig.output_fields[CHOICE_FIELD].annotation) == ("Escalate", "None")
    assert "- Escalate: Escalate. Hand the request to a human agent." in sig.instructions
    assert "- None:" in sig.instructions


def request() -> g.Request:
    return g.Request(email="a@b.c", question="What is 6*7?")


def classify_lm(**faults: list[object]) -> ScriptedLM:
    return ScriptedLM(
        make={"Classify": {"topic": "math"}, "MathAnswer": {"answer": 42}},
        choose={"Classify": "MathAnswer"},
        faults=faults,
    )


def run(lm: ScriptedLM, observers: tuple[CallLog, ...] = (), **kwargs: object) -> object:
    backend = DSPyBackend(lm, backoff_s=0.0, **kwargs)
    return Graph(start=g.Request).run(request(), lm=backend, observers=observers)


def test_self_correction_after_one_bad_answer() -> None:
    lm = classify_lm(MathAnswer=['{"answer": "forty-two"}'])
    result = run(lm)
    assert result.node.answer == 42
    attempts = lm.calls_for("MathAnswer")
    assert len(attempts) == 2
    assert FEEDBACK_FIELD not in attempts[0].inputs
    assert "answer" in attempts[1].inputs[FEEDBACK_FIELD]  # the LM is told what was wrong
    [record] = [c for c in result.calls if c.node == "MathAnswer"]
    assert record.attempts == 2 and record.error is None


def test_invalid_choice_is_self_corrected() -> None:
    lm = classify_lm(**{"Classify.choice": ['{"next_step": "Nowhere"}']})
    assert run(lm).path == ["Request", "Classify", "MathAnswer"]
    assert len(lm.calls_for("Classify", "choice")) == 2


def test_parse_error_after_retries() -> None:
    lm = classify_lm(MathAnswer=["garbage"] * 3)
    with pytest.raises(BaeParseError, match=r"MathAnswer \(make\).*after 3 attempts") as info:
        run(lm, max_retries=2)
    assert info.value.cause is not None
    assert len(lm.calls_for("MathAnswer")) == 3
    assert "BAE_RESPONSE_FORMAT" not in info.value.message  # the hint is for a model string, not any LM


def test_transient_failures_are_retried_then_succeed() -> None:
    lm = classify_lm(MathAnswer=[TimeoutError("slow"), ConnectionError("reset")])
    result = run(lm)
    assert result.node.answer == 42
    assert len(lm.calls_for("MathAnswer")) == 3


def test_lm_error_after_transient_failures() -> None:
    lm = classify_lm(MathAnswer=[TimeoutError("slow")] * 10)
    with pytest.raises(BaeLMError, match=r"MathAnswer \(make\): LM still failing after 3 attempts") as info:
        run(lm, max_transient_retries=2)
    assert isinstance(info.value.cause, Exception)
    assert len(lm.calls_for("MathAnswer")) == 3


def test_non_transient_lm_failure_is_not_retried() -> None:
    lm = classify_lm(MathAnswer=[PermissionError("bad key")])
    with pytest.raises(BaeLMError, match="bad key"):
        run(lm)
    assert len(lm.calls_for("MathAnswer")) == 1


def test_failed_calls_are_recorded_with_their_error() -> None:
    """Observers see every call as it ends, the failed one too, and the failed run's result keeps them."""
    log = CallLog()
    lm = classify_lm(MathAnswer=["garbage"] * 3)
    with pytest.raises(BaeParseError) as info:
        run(lm, observers=(log,))
    records = log.calls
    assert [(r.node, r.kind, r.error is None) for r in records] == [
        ("Classify", "make", True),
        ("Classify", "choice", True),
        ("MathAnswer", "make", False),
    ]
    assert records[-1].attempts == 3
    assert info.value.result is not None and info.value.result.calls == records


def test_usage_is_reported_per_call() -> None:
    result = run(classify_lm())
    assert all(c.prompt_tokens and c.prompt_tokens > 0 for c in result.calls)
    assert all(c.completion_tokens is not None for c in result.calls)


def test_make_outside_a_run_resolves_from_the_given_node() -> None:
    lm = classify_lm()
    made = DSPyBackend(lm).make(g.Request(email="x@y.z", question="2+2?"), g.Classify)
    assert made.question == "2+2?" and made.topic == "math"


def test_no_lm_call_when_nothing_is_generated() -> None:
    lm = ScriptedLM()
    made = DSPyBackend(lm).make(g.Classify(question="q", topic="other"), _Echo)
    assert made.question == "q" and lm.calls == []


def test_with_no_lm_given_or_configured_the_default_is_the_clis(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$BAE_LM`` (else the embedded model), built once: what ``bae run`` would use."""
    monkeypatch.setenv("BAE_LM", f"{LMS}:oracle")
    example = load_graph(EXAMPLE)
    start = example.graph.start(customer_email="ana@northwind.io", text="I was charged twice.")
    with dspy.context(lm=None):
        first = example.graph.run(start, **example.deps)
        second = DSPyBackend().decide(first.trace[1])
    assert first.path == ["Ticket", "Triage", "BillingIssue"] and [c.source for c in first.calls] == ["naive"] * 2
    assert type(second).__name__ == "BillingIssue"
    assert default_lm() is default_lm() and isinstance(default_lm(), ScriptedLM)
    monkeypatch.setenv("BAE_LM", "gpt-4o")  # not a model spec: the same one-line error as `bae run --lm gpt-4o`
    with dspy.context(lm=None), pytest.raises(BaeInputError, match="'gpt-4o' is not a model spec"):
        DSPyBackend().make(request(), g.Classify)


def test_transient_classification() -> None:
    class Http(Exception):
        def __init__(self, status: int) -> None:
            self.status_code = status

    assert is_transient(TimeoutError()) and is_transient(Http(503)) and is_transient(Http(429))
    assert not is_transient(Http(400)) and not is_transient(ValueError())
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = TimeoutError()
    assert is_transient(wrapped)


class _Echo(g.Node):
    """Only context: nothing to generate."""

    question: typing.Annotated[str, g.Context("q")]


def test_caching_adapter_renders_exactly_what_json_adapter_renders() -> None:
    """Compiled predictors' prompts, with and without self-correction feedback, before and after demos change."""
    from bae.adapter import CachingJSONAdapter
    from bae.loader import load_graph
    from bae.optimized_lm import open_version
    from bae.predictors import with_feedback
    from tests.cli import EXAMPLE, ROOT

    graph = load_graph(EXAMPLE).graph
    predictors = open_version(ROOT / "compiled", graph).predictors.values()
    cached, stock = CachingJSONAdapter(cache_size=4), dspy.JSONAdapter()
    inputs = {"text": "I was charged twice", "plan": "pro", FEEDBACK_FIELD: "priority must be low, medium or high"}
    for predictor in predictors:
        assert predictor.demos, "the committed version should carry demos"
        variants = (predictor.demos, predictor.demos, predictor.demos[1:], [dspy.Example(**d) for d in predictor.demos])
        for signature in (predictor.signature, with_feedback(predictor.signature)):
            given = {name: inputs.get(name, "x") for name in signature.input_fields}
            for demos in variants:
                assert cached.format(signature, demos, given) == stock.format(signature, demos, given)
