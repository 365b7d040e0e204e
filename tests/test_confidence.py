"""Confidence: how sure an LM was of a closed answer, from its engine's logprobs to the call record.

Three engines report it, each through DSPy's engine contract (``Response.logprobs``): the scripted test LM,
a LiteLLM model over real HTTP (a fake OpenAI server that returns token logprobs, or refuses them), and
the embedded model (``local``-marked).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import dspy
import pytest

from bae import DSPyBackend, Graph, Node
from bae.confidence import answer_logprobs, confidence, value_spans
from bae.result import CallRecord
from bae.testing import ScriptedLM
from examples.support_triage import CustomerDirectory, Ticket
from examples.support_triage import graph as triage
from tests.fake_openai import Fail, fake_openai

TICKET = Ticket(customer_email="ana@northwind.io", text="I was charged twice, please refund the duplicate.")


def content(pieces: Any) -> dict[str, Any]:
    """Logprob pieces as DSPy hands them to bae (``prediction.logprobs``)."""
    return {"content": [{"token": p.token, "logprob": p.logprob} for p in pieces]}


def test_value_spans_find_each_top_level_value() -> None:
    text = 'Sure: {"a": "x, y", "b": {"c": [1, 2]}, "d": true}'
    spans = value_spans(text)
    assert {name: text[start:end] for name, (start, end) in spans.items()} == {
        "a": '"x, y"',
        "b": '{"c": [1, 2]}',
        "d": "true",
    }
    assert value_spans("no JSON here") == {} and value_spans('{"a": }') == {}


def test_the_least_probable_closed_value_is_the_answers_confidence() -> None:
    text = '{\n  "priority": "high",\n  "refund_requested": true,\n  "note": "ok"\n}'
    odds = {"priority": {'"low"': 0.1, '"medium"': 0.2, '"high"': 0.7}, "refund_requested": 0.9}
    pieces = answer_logprobs(text, odds)
    assert "".join(p.token for p in pieces) == text  # the pieces cover the answer exactly
    high = next(p for p in pieces if p.token == '"high"')
    assert [t.token for t in high.top] == ['"low"', '"medium"', '"high"']  # the alternatives travel along
    assert confidence(content(pieces), ["priority", "refund_requested"]) == pytest.approx(0.7)
    assert confidence(content(pieces), ["refund_requested"]) == pytest.approx(0.9)
    assert confidence(content(pieces), ["note"]) == pytest.approx(1.0)  # open text: only asked for closed fields
    assert confidence(content(pieces), []) is None and confidence(None, ["priority"]) is None


def test_a_value_split_across_tokens_sums_their_logprobs() -> None:
    tokens = ['{"', "next", '_step": "', "Bill", "ing", 'Issue"', "}"]
    logprobs = [0.0, 0.0, 0.0, math.log(0.5), math.log(0.8), 0.0, 0.0]
    given = {"content": [{"token": t, "logprob": lp} for t, lp in zip(tokens, logprobs, strict=True)]}
    assert confidence(given, ["next_step"]) == pytest.approx(0.4)


def calls_of(graph: Graph, start: Node, lm: dspy.BaseLM) -> list[CallRecord]:
    return graph.run(start, lm=DSPyBackend(lm), crm=CustomerDirectory()).calls


def test_a_scripted_confidence_reaches_the_call_record_with_the_step_it_made() -> None:
    lm = ScriptedLM(
        make={"BillingIssue": {"priority": "high", "refund_requested": True}},
        choose={"Triage": "BillingIssue"},
        confidence={"Triage.choice": 0.42, "BillingIssue": [0.9]},
    )
    choice, make = calls_of(triage, TICKET, lm)
    assert (choice.node, choice.kind, choice.step) == ("Triage", "choice", 2)
    assert (make.node, make.kind, make.step) == ("BillingIssue", "make", 2)  # both made trace position 2
    assert choice.confidence == pytest.approx(0.42) and make.confidence == pytest.approx(0.9)
    unscripted = ScriptedLM(
        make={"BillingIssue": {"priority": "high", "refund_requested": True}}, choose={"Triage": "BillingIssue"}
    )
    assert [c.confidence for c in calls_of(triage, TICKET, unscripted)] == [None, None]


class Question(Node):
    """A question."""

    text: str

    def __call__(self, lm: Any) -> Answer: ...


class Answer(Node):
    """An answer to the question, and how formal it is."""

    reply: str
    tone: Literal["formal", "casual"]


class Essay(Node):
    """An essay."""

    body: str


class Prompt(Node):
    """A prompt for an essay."""

    text: str

    def __call__(self, lm: Any) -> Essay: ...


def test_only_closed_fields_carry_a_confidence() -> None:
    """A mixed answer's confidence is its closed field's; an answer of open text only has none."""
    lm = ScriptedLM(make={"Answer": {"reply": "yes", "tone": "formal"}, "Essay": {"body": "..."}},
                    confidence={"Answer": 0.3, "Essay": 0.8})  # fmt: skip
    (mixed,) = Graph(start=Question).run(Question(text="?"), lm=DSPyBackend(lm)).calls
    assert mixed.confidence == pytest.approx(0.3)
    (open_text,) = Graph(start=Prompt).run(Prompt(text="?"), lm=DSPyBackend(lm)).calls
    assert open_text.confidence is None


def _logprobs_of(text: str, chosen: float) -> dict[str, Any]:
    """An OpenAI chat completion's ``logprobs`` for ``text``: every token sure but the closed value's."""
    spans = value_spans(text)
    entries = []
    at = 0
    for start, end in sorted(spans.values()):
        entries.append({"token": text[at:start], "logprob": 0.0, "bytes": None, "top_logprobs": []})
        entries.append({"token": text[start:end], "logprob": math.log(chosen), "bytes": None, "top_logprobs": []})
        at = end
    entries.append({"token": text[at:], "logprob": 0.0, "bytes": None, "top_logprobs": []})
    return {"content": [e for e in entries if e["token"]]}


def test_a_litellm_models_logprobs_become_the_confidence() -> None:
    """Over real HTTP through LiteLLM: bae asks for logprobs, and the closed value's tokens give the confidence."""
    answer = json.dumps({"reply": "yes", "tone": "formal"})
    with fake_openai(lambda body: answer, logprobs=lambda text: _logprobs_of(text, 0.25)) as server:
        lm = dspy.LM("openai/fake", api_base=server.url, api_key="none", num_retries=0, cache=False)
        (call,) = Graph(start=Question).run(Question(text="?"), lm=DSPyBackend(lm)).calls
    assert server.bodies[0].get("logprobs") is True
    assert call.confidence == pytest.approx(0.25) and call.error is None


def test_a_model_that_refuses_logprobs_still_answers_and_is_not_asked_again() -> None:
    """A 400 for the parameter: the same request once more without it; the backend then stops asking."""
    answer = json.dumps({"reply": "yes", "tone": "formal"})
    with fake_openai(lambda body: answer, refuse_logprobs=True) as server:
        lm = dspy.LM("openai/fake", api_base=server.url, api_key="none", num_retries=0, cache=False)
        backend = DSPyBackend(lm)
        graph = Graph(start=Question)
        (first,) = graph.run(Question(text="?"), lm=backend).calls
        (second,) = graph.run(Question(text="??"), lm=backend).calls
    assert [bool(body.get("logprobs")) for body in server.bodies] == [True, False, False]
    assert (first.attempts, first.confidence, first.error) == (2, None, None)
    assert (second.attempts, second.confidence) == (1, None)


def test_a_bad_request_that_is_not_about_logprobs_fails_at_once() -> None:
    """A 400 that does not name logprobs is a permanent fault: sent once, the LM error it was (exit 4)."""
    from bae.exceptions import BaeLMError

    answer = json.dumps({"reply": "yes", "tone": "formal"})
    with fake_openai(lambda body: answer, [Fail(400), Fail(400)]) as server:
        lm = dspy.LM("openai/fake", api_base=server.url, api_key="none", num_retries=0, cache=False)
        backend = DSPyBackend(lm)
        with pytest.raises(BaeLMError):
            Graph(start=Question).run(Question(text="?"), lm=backend)
    assert len(server.bodies) == 1 and backend.ask_logprobs  # not asked again; still asks next time


@pytest.mark.local
def test_the_embedded_model_reports_each_choice_as_its_share_of_the_options_scores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The local engine's closed answers: a chosen value's probability is its softmax share of the scores the
    engine chose it by (the choice's calibrated), the least of a call's fields is the call's confidence."""
    from bae.local.decoding import softmax
    from bae.local.engine import local_lm

    with caplog.at_level("DEBUG", logger="bae.local.engine"):
        calls = calls_of(triage, TICKET, local_lm())
    scored = [r.args for r in caplog.records if str(r.msg).startswith("closed answer")]
    assert [c.kind for c in calls] == ["choice", "make"] and len(scored) == 2
    for call, (text, _, scores) in zip(calls, scored, strict=True):
        chosen = json.loads(text)
        expected = min(softmax(scores[name])[json.dumps(value)] for name, value in chosen.items())
        assert call.confidence == pytest.approx(expected, rel=1e-6), (call, scores)
        assert 0 < call.confidence <= 1
