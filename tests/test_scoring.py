"""The whole-graph score credits only what the LM produced; confusion matrices count its choices.

Gold and predicted traces are built by hand on the example graph (``Ticket -> Triage`` is custom
logic, ``Triage`` decides between three queues, the queues are terminal) and on the core tests'
graph (a make step, an optional edge, custom logic making nodes with plain fields).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import pytest

from bae import LM, Context
from bae.dataset import GoldTrace, load_dataset
from bae.dspy_backend import DSPyBackend
from bae.executor import Call, ThreadExecutor
from bae.graph import Graph
from bae.loader import LoadedGraph, load_graph
from bae.node import Node
from bae.scoring import GraphScore, lm_steps, run_trace, run_traces, score_trace, summarize
from bae.testing import ScriptedLM
from tests import graphs as g
from tests import lms
from tests.cli import EXAMPLE, TRAIN


@pytest.fixture(scope="module")
def loaded() -> LoadedGraph:
    return load_graph(EXAMPLE)


@pytest.fixture(scope="module")
def golds(loaded: LoadedGraph) -> dict[str, tuple[Node, ...]]:
    """The first gold trace ending at each queue."""
    found: dict[str, tuple[Node, ...]] = {}
    for trace in load_dataset(TRAIN, loaded.graph).traces:
        found.setdefault(trace.path[-1], trace.nodes)
    assert set(found) == set(lms.QUEUES)
    return found


def queue(loaded: LoadedGraph, name: str, before: Node, **fields: Any) -> Node:
    """A queue node made from ``before`` (a Triage), with the generated fields given."""
    return loaded.graph.node(name)(text=before.text, plan=before.plan, **fields)


def generated(node: Node) -> dict[str, Any]:
    return {k: v for k, v in node.model_dump().items() if k not in ("text", "plan")}


def test_only_the_choice_and_the_fields_it_made_are_lm_steps(golds: dict[str, tuple[Node, ...]]) -> None:
    for gold in golds.values():
        assert [type(n).__name__ for n in gold][:2] == ["Ticket", "Triage"]
        assert lm_steps(gold) == [2]  # Ticket -> Triage is custom logic: not a step the LM made


def test_a_right_run_scores_1_on_the_lm_step_alone(golds: dict[str, tuple[Node, ...]]) -> None:
    gold = golds["BillingIssue"]
    scored = score_trace(gold, list(gold))
    assert (scored.score, scored.steps, scored.path_ok) == (1.0, 1, True)
    assert scored.choices == [("Triage", "BillingIssue", "BillingIssue")]


def test_a_wrong_route_costs_and_the_custom_step_earns_nothing(
    loaded: LoadedGraph, golds: dict[str, tuple[Node, ...]]
) -> None:
    gold = golds["BillingIssue"]
    ticket, triage, _ = gold
    wrong = queue(loaded, "TechnicalIssue", triage, priority="high", product_area="api")
    scored = score_trace(gold, [ticket, triage, wrong])
    # the old rule gave 0.5: half for the custom Ticket -> Triage step, which is always right
    assert (scored.score, scored.steps, scored.path_ok) == (0.0, 1, False)
    assert scored.per_predictor == {("Triage", "choice"): 0.0}
    assert scored.choices == [("Triage", "BillingIssue", "TechnicalIssue")]


def test_fields_earn_alongside_the_choice(loaded: LoadedGraph, golds: dict[str, tuple[Node, ...]]) -> None:
    gold = golds["AccountIssue"]
    ticket, triage, right = gold
    fields = generated(right)
    other = next(a for a in ("reset password", "two-factor help", "change email") if a != fields["action"])
    half = queue(loaded, "AccountIssue", triage, priority=fields["priority"], action=other)
    scored = score_trace(gold, [ticket, triage, half])
    assert scored.score == pytest.approx((1 + 1) / 3)  # the choice and one of two fields, each weighing one
    assert scored.per_predictor == {("Triage", "choice"): 1.0, ("AccountIssue", "make"): 0.5}
    assert scored.path_ok


def test_an_extra_step_costs(loaded: LoadedGraph, golds: dict[str, tuple[Node, ...]]) -> None:
    gold = golds["BillingIssue"]
    extra = queue(loaded, "TechnicalIssue", gold[1], priority="low", product_area="api")
    scored = score_trace(gold, [*gold, extra])
    assert (scored.score, scored.steps, scored.path_ok) == (0.5, 2, False)


def test_a_failed_run_scores_0_and_its_choice_is_an_error(golds: dict[str, tuple[Node, ...]]) -> None:
    gold = golds["TechnicalIssue"]
    scored = score_trace(gold, list(gold[:2]), error="TechnicalIssue (make): the LM's answer did not parse")
    assert (scored.score, scored.steps, scored.path_ok) == (0.0, 1, False)
    assert scored.choices == [("Triage", "TechnicalIssue", "error")]
    assert score_trace(gold, list(gold[:1]), error="the CRM is down").choices == []  # Triage never reached


# -- a detour: Fork chooses Left or Right, both go on to Joined, made by the LM


class Fork(Node):
    """Pick a side."""

    question: str

    def __call__(self, lm: LM) -> Left | Right: ...


class Left(Node):
    """The left side."""

    question: Annotated[str, Context("the question")]

    def __call__(self, lm: LM) -> Joined: ...


class Right(Node):
    """The right side."""

    question: Annotated[str, Context("the question")]

    def __call__(self, lm: LM) -> Joined: ...


class Joined(Node):
    """Where both sides meet."""

    question: Annotated[str, Context("the question")]
    answer: str


def test_a_step_earns_only_when_the_node_before_it_was_right_too() -> None:
    """A run that leaves gold (Right for Left) and rejoins it at the same node and position earns
    nothing for the step after the detour, even with the right fields: the LM made them from the
    wrong node."""
    gold = [Fork(question="q"), Left(question="q"), Joined(question="q", answer="a")]
    detour = [Fork(question="q"), Right(question="q"), Joined(question="q", answer="a")]
    assert lm_steps(gold) == [1, 2]
    assert score_trace(gold, gold).score == 1.0
    scored = score_trace(gold, detour)
    assert (scored.score, scored.steps, scored.path_ok) == (0.0, 2, False)
    assert scored.per_predictor == {("Fork", "choice"): 0.0}


# -- the core tests' graph: Request -> Classify (make), Classify decides, HistoryAnswer -> Escalate | None,
#    Escalate -> Filed -> Done custom logic that fills Filed.ticket and Done.summary itself


def escalated(question: str = "Who won at Hastings?", ticket: int = 1, summary: str = "ticket 1") -> list[Node]:
    account = g.Account("a@b.com", "basic")
    return [
        g.Request(email="a@b.com", question=question),
        g.Classify(question=question, topic="history"),
        g.HistoryAnswer(question=question, answer="William"),
        g.Escalate(question=question, reason="unsure"),
        g.Filed(ticket=ticket, account=account),
        g.Done(summary=summary),
    ]


def test_custom_logic_counts_neither_way_even_when_it_fills_plain_fields() -> None:
    gold = escalated()
    # made by the LM: Classify (make), HistoryAnswer (choice + make), Escalate (choice + make)
    assert lm_steps(gold) == [1, 2, 3]
    scored = score_trace(gold, escalated(ticket=7, summary="something else"))
    assert scored.score == 1.0 and scored.path_ok
    assert ("Filed", "make") not in scored.per_predictor and ("Done", "make") not in scored.per_predictor


def test_ending_is_a_choice_and_the_run_past_it_costs() -> None:
    gold = escalated()[:3]  # HistoryAnswer chose to end
    assert lm_steps(gold) == [1, 2, 3]
    assert score_trace(gold, gold).score == 1.0
    scored = score_trace(gold, escalated())  # the run went on: a wrong choice and three extra steps
    assert scored.steps == 6 and scored.score == pytest.approx(2 / 6)
    assert scored.per_predictor[("HistoryAnswer", "choice")] == 0.0
    assert scored.choices == [("Classify", "HistoryAnswer", "HistoryAnswer"), ("HistoryAnswer", "None", "Escalate")]
    ended = score_trace(escalated(), gold)  # and the other way round: the run ended where gold went on
    assert ended.choices[-1] == ("HistoryAnswer", "Escalate", "None")
    assert ended.score == pytest.approx(2 / 3)


def evaluate_graph(graph: Graph, traces: list[GoldTrace], lm: LM, deps: dict[str, Any], threads: int = 1) -> GraphScore:
    """Run and score every trace, then sum up: what compile and ``bae.evaluate`` do for one version."""
    runs = run_traces(Call(lambda trace: run_trace(graph, trace, lm, deps)), traces, ThreadExecutor(threads))
    return summarize(graph, [run.scored for run in runs])


def test_evaluate_graph_counts_every_choice_once(loaded: LoadedGraph) -> None:
    every = load_dataset(TRAIN, loaded.graph).traces
    traces = [t for q, n in zip(lms.QUEUES, (5, 3, 4), strict=True) for t in [t for t in every if t.path[-1] == q][:n]]
    gold = lms.gold()
    lm = lms.triage_lm()
    # routes AccountIssue tickets to billing, and never gets TechnicalIssue's fields to parse
    lm.script["Triage.choice"] = lambda call: "BillingIssue" if gold[call.inputs["text"]]["node"] == "AccountIssue" \
        else gold[call.inputs["text"]]["node"]  # fmt: skip
    lm.faults["TechnicalIssue"] = ["not json"] * 1000
    result = evaluate_graph(loaded.graph, traces, DSPyBackend(lm), loaded.deps, threads=2)
    counts = Counter(t.path[-1] for t in traces)
    assert counts == {"BillingIssue": 5, "TechnicalIssue": 3, "AccountIssue": 4}
    assert result.confusion == {
        "Triage.choice": {
            "BillingIssue": {"BillingIssue": counts["BillingIssue"]},
            "TechnicalIssue": {"error": counts["TechnicalIssue"]},
            "AccountIssue": {"BillingIssue": counts["AccountIssue"]},
        }
    }
    assert result.errors == counts["TechnicalIssue"] and result.traces == len(traces)
    assert result.score == pytest.approx(counts["BillingIssue"] / len(traces))  # right choice and fields, or 0
    assert result.path_accuracy == pytest.approx(counts["BillingIssue"] / len(traces))
    assert result.as_dict()["confusion"] == result.confusion


def test_a_trace_without_lm_steps_has_no_score() -> None:
    gold = escalated()[4:]  # Filed -> Done: custom logic only
    assert lm_steps(gold) == []
    scored = score_trace(gold, list(gold))
    assert scored.score is None and scored.steps == 0 and scored.path_ok
    traces = [GoldTrace(tuple(gold), "custom only")]
    result = evaluate_graph(Graph(start=g.Filed), traces, DSPyBackend(ScriptedLM()), {})
    assert (result.score, result.path_accuracy, result.confusion) == (0.0, 1.0, {})  # nothing the LM earned
