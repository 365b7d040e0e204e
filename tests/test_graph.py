"""The graph model: edges and roles from annotations, validation, and runs."""

from __future__ import annotations

from typing import Annotated

import pytest

from bae import BaeError, BaeGraphError, Bind, Context, Dep, Graph, Node
from bae.dspy_backend import DSPyBackend
from bae.node import spec_of
from bae.testing import ScriptedLM
from tests import graphs as g


def backend(lm: ScriptedLM) -> DSPyBackend:
    return DSPyBackend(lm, backoff_s=0.0)


def test_edges_and_roles_come_from_annotations() -> None:
    graph = Graph(start=g.Request)
    assert graph.nodes[0] is g.Request
    assert set(graph.nodes) == {
        g.Request,
        g.Classify,
        g.MathAnswer,
        g.HistoryAnswer,
        g.Escalate,
        g.Filed,
        g.Done,
    }
    assert graph.edges[g.Classify] == (g.MathAnswer, g.HistoryAnswer, g.Escalate)
    assert graph.edges[g.HistoryAnswer] == (g.Escalate,)
    assert set(graph.terminal_nodes) == {g.MathAnswer, g.HistoryAnswer, g.Done}
    classify = spec_of(g.Classify)
    assert [f.name for f in classify.context] == ["question"]
    assert [f.name for f in classify.generated] == ["topic"]
    assert classify.context[0].description == "the customer's question"
    assert classify.routed and classify.decides
    assert spec_of(g.Request).routed and not spec_of(g.Request).decides
    assert spec_of(g.HistoryAnswer).decides  # optional edge: escalate or end
    escalate = spec_of(g.Escalate)
    assert not escalate.routed
    assert [(d.name, d.annotation) for d in escalate.deps] == [
        ("directory", g.Directory),
        ("outbox", g.Outbox),
    ]
    assert [f.name for f in spec_of(g.Filed).bound] == ["account"]


def test_forward_references_resolve_for_function_local_classes() -> None:
    class First(Node):
        def __call__(self, lm: object) -> Second | None: ...

    class Second(Node):
        value: Annotated[int, Context("x")]

    graph = Graph(start=First)
    assert graph.edges[First] == (Second,)
    assert spec_of(First).may_end


def test_example_graph_is_valid() -> None:
    assert Graph(start=g.Request).validate() == []


def run_scripted(topic: str, answer: object, **choose: str) -> tuple[object, ScriptedLM, g.Outbox]:
    lm = ScriptedLM(
        make={
            "Classify": {"topic": topic},
            "MathAnswer": {"answer": answer},
            "HistoryAnswer": {"answer": "In 1066."},
            "Escalate": {"reason": "needs a human"},
        },
        choose={
            "Classify": choose.get("classify", "MathAnswer"),
            "HistoryAnswer": choose.get("history", "None"),
        },
    )
    outbox = g.Outbox()
    result = Graph(start=g.Request).run(
        g.Request(email="ann@vip.com", question="What is 2+2?"),
        lm=backend(lm),
        directory=g.Directory(),
        outbox=outbox,
    )
    return result, lm, outbox


def test_run_make_then_decide_to_terminal() -> None:
    result, lm, outbox = run_scripted("math", 4)
    assert result.path == ["Request", "Classify", "MathAnswer"]
    assert isinstance(result.node, g.MathAnswer) and result.node.answer == 4
    assert result.node.question == "What is 2+2?"  # Context filled from upstream by name
    assert [(c.node, c.kind) for c in lm.calls] == [
        ("Classify", "make"),
        ("Classify", "choice"),
        ("MathAnswer", "make"),
    ]
    assert lm.calls[1].inputs == {"question": "What is 2+2?", "topic": "math"}  # the decider's visible state
    assert [(c.node, c.kind, c.source) for c in result.calls] == [
        ("Classify", "make", "naive"),
        ("Classify", "choice", "naive"),
        ("MathAnswer", "make", "naive"),
    ]
    assert outbox.sent == []


def test_run_through_custom_logic_with_deps_and_bind() -> None:
    result, lm, outbox = run_scripted("history", "", classify="HistoryAnswer", history="Escalate")
    assert result.path == ["Request", "Classify", "HistoryAnswer", "Escalate", "Filed", "Done"]
    assert outbox.sent == [("ann@vip.com", "needs a human")]
    assert result.node.summary == "ticket 1 for gold customer"  # Dep injected from the Bind field
    assert len(lm.calls) == 5  # Classify make+choice, HistoryAnswer make+choice, Escalate make


def test_optional_edge_can_end() -> None:
    result, _, _ = run_scripted("history", "", classify="HistoryAnswer", history="None")
    assert result.path == ["Request", "Classify", "HistoryAnswer"]


def test_missing_dep_names_node_parameter_and_type() -> None:
    lm = ScriptedLM(make={"Classify": {"topic": "other"}, "Escalate": {"reason": "r"}}, choose={"Classify": "Escalate"})
    with pytest.raises(BaeGraphError, match=r"Escalate.__call__ needs directory: Directory"):
        Graph(start=g.Request).run(g.Request(email="a@b.c", question="q"), lm=backend(lm), outbox=g.Outbox())


def test_max_steps_names_the_loop() -> None:
    class Draft(Node):
        text: str

        def __call__(self, lm: object) -> Review:
            return Review(text=self.text)

    class Review(Node):
        text: str

        def __call__(self, lm: object) -> Draft | None:
            return Draft(text=self.text)

    with pytest.raises(BaeError, match=r"max_steps=5: loop: Review -> Draft -> Review"):
        Graph(start=Draft).run(Draft(text="x"), lm=backend(ScriptedLM()), max_steps=5)


def test_custom_logic_returning_an_undeclared_node_is_refused() -> None:
    class Start(Node):
        def __call__(self, lm: object) -> Other | None:
            return Stray()

    class Other(Node):
        pass

    class Stray(Node):
        pass

    with pytest.raises(BaeGraphError, match="Start returned Stray"):
        Graph(start=Start).run(Start(), lm=backend(ScriptedLM()))


def test_validate_reports_a_node_with_no_path_to_an_end() -> None:
    class Ping(Node):
        def __call__(self, lm: object) -> Pong: ...

    class Pong(Node):
        def __call__(self, lm: object) -> Ping: ...

    problems = Graph(start=Ping).validate()
    assert {(p.kind, p.node) for p in problems} == {("no_end", "Ping"), ("no_end", "Pong")}


def test_validate_reports_unsupplied_context_with_node_and_field() -> None:
    class Ask(Node):
        question: str

        def __call__(self, lm: object) -> Answer: ...

    class Answer(Node):
        question: Annotated[str, Context("q")]
        audience: Annotated[str, Context("who reads it")]
        text: str

    [problem] = Graph(start=Ask).validate()
    assert (problem.kind, problem.node, problem.field) == ("context", "Answer", "audience")
    assert "Answer.audience" in str(problem)


def test_validate_accepts_context_supplied_by_a_bind_of_its_type() -> None:
    class Session:
        pass

    class Login(Node):
        session: Annotated[Session, Bind()]

        def __call__(self, lm: object) -> Act: ...

    class Act(Node):
        current: Annotated[Session, Context("the session")]

    # by name nothing supplies "current"; the Bind of type Session does
    assert Graph(start=Login).validate() == []


def test_validate_reports_duplicate_bind_types() -> None:
    class Conn:
        pass

    class A(Node):
        conn: Annotated[Conn, Bind()]

        def __call__(self, lm: object) -> B: ...

    class B(Node):
        other: Annotated[Conn, Bind()]

    [problem] = Graph(start=A).validate()
    assert (problem.kind, problem.node, problem.field) == ("bind", "B", "other")
    assert "already bound by A.conn" in str(problem)


def test_validate_reports_unresolved_annotations_and_run_refuses() -> None:
    class Start(Node):
        def __call__(self, lm: object) -> NoSuchNode: ...  # noqa: F821

    class Helper(Node):
        def __call__(self, lm: object, svc: NoSuchService) -> None: ...  # noqa: F821

    [problem] = Graph(start=Start).validate()
    assert problem.kind == "annotation" and problem.node == "Start"
    assert "NoSuchNode" in str(problem)
    assert "NoSuchService" in str(Graph(start=Helper).validate()[0])
    with pytest.raises(BaeGraphError, match="NoSuchNode"):
        Graph(start=Start).run(Start(), lm=backend(ScriptedLM()))


def test_dep_parameter_without_marker_is_a_problem() -> None:
    class Start(Node):
        def __call__(self, lm: object, svc: int) -> None:
            return None

    [problem] = Graph(start=Start).validate()
    assert "parameter 'svc'" in str(problem) and "Dep()" in str(problem)


def test_to_mermaid_lists_every_edge_and_end() -> None:
    mermaid = Graph(start=g.Request).to_mermaid()
    assert mermaid.splitlines()[0] == "graph TD"
    assert "    Classify --> Escalate" in mermaid
    assert "    HistoryAnswer --> END([end])" in mermaid
    assert "Filed --> Done" in mermaid


def test_graph_needs_a_node_class() -> None:
    with pytest.raises(BaeGraphError):
        Graph(start=int)  # type: ignore[arg-type]


def test_run_refuses_a_start_node_of_another_graph() -> None:
    with pytest.raises(BaeGraphError, match="starts at Request"):
        Graph(start=g.Request).run(g.Done(summary="x"), lm=backend(ScriptedLM()))


def test_dep_injected_by_type_regardless_of_keyword() -> None:
    class Start(Node):
        def __call__(self, lm: object, out: Annotated[g.Outbox, Dep()]) -> None:
            out.send("me", "hi")

    outbox = g.Outbox()
    Graph(start=Start).run(Start(), lm=backend(ScriptedLM()), anything=outbox)
    assert outbox.sent == [("me", "hi")]
