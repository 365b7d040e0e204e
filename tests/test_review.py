"""``bae.review``, the logic of ``bae review`` without a terminal: inputs, order, the draft a person changes,
decisions and what they write, resume, auto-accept, teachers. The app's keys are tested in
``test_review_app.py``; both drive the real graph code and the real dataset loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from bae import Context, DSPyBackend, Graph, Node
from bae.dataset import load_dataset
from bae.exceptions import BaeInputError, BaeLMError
from bae.executor import ThreadExecutor
from bae.lm_specs import LMSettings
from bae.loader import LoadedGraph, load_graph
from bae.recording import Recorder, record_line
from bae.review import (
    MISSING,
    ROUTE_END,
    Answer,
    Draft,
    GoldFile,
    ReviewError,
    ReviewSession,
    Slot,
    open_teacher,
    ordered,
    read_inputs,
)
from bae.testing import ScriptedLM
from tests import lms, review_lms
from tests.cli import EXAMPLE, ROOT

LOADED = load_graph(EXAMPLE)
TRIAGE = LOADED.graph
TICKETS = [trace[0]["fields"] for trace in lms.TRACES]


def record(path: Path, lm: ScriptedLM, tickets: list[dict[str, Any]], loaded: LoadedGraph = LOADED) -> Path:
    """What ``bae run --record`` writes for ``tickets`` answered by ``lm``."""
    recorder = Recorder(path)
    for ticket in tickets:
        result = loaded.graph.run(loaded.graph.start(**ticket), lm=DSPyBackend(lm), **loaded.deps)
        recorder.append([record_line(result, "v1")])
    return path


def session_of(tmp_path: Path, lm: ScriptedLM, tickets: list[dict[str, Any]], order: str = "file") -> ReviewSession:
    recorded = record(tmp_path / "recorded.jsonl", lm, tickets)
    return ReviewSession.start(TRIAGE, read_inputs([recorded], TRIAGE), GoldFile(tmp_path / "gold.jsonl"), order)


def gold_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "gold.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def slot(session: ReviewSession, field: str | None) -> Slot:
    return next(s for s in session.slots() if s.field == field)


# -- inputs -------------------------------------------------------------------------------------------
def test_a_record_file_is_one_input_per_line_with_what_made_each_step(tmp_path: Path) -> None:
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), [*TICKETS[:3], TICKETS[0]])
    items = read_inputs([recorded, recorded], TRIAGE)
    assert [item.source for item in items] == [f"{recorded}:{n}" for n in (1, 2, 3)]  # each input once
    first = items[0]
    assert first.proposal.label == "recorded" and first.proposal.names == ("Ticket", "Triage", "BillingIssue")
    assert [c["predictor"] for c in first.proposal.calls[2]] == ["Triage.choice", "BillingIssue.make"]
    assert first.confidence == review_lms.sureness(_call(TICKETS[0]["text"]))
    assert first.proposal.versions == ["v1"]


def _call(text: str) -> Any:
    from bae.predictors import PredictorCall

    return PredictorCall("Triage", "choice", {"text": text})


def eval_output(tmp_path: Path, traces: list[list[dict[str, Any]]]) -> Path:
    """A real ``bae eval --output`` of the example's v1 and the naive graph on ``traces`` (a student LM: the
    naive graph is often wrong)."""
    from bae_cli.app import run

    dataset = tmp_path / "golden.jsonl"
    dataset.write_text("".join(json.dumps({"trace": t}) + "\n" for t in traces))
    output = tmp_path / "runs.jsonl"
    code = run(["eval", EXAMPLE, "--compiled", str(ROOT / "compiled"), "--naive", "--dataset", str(dataset), "--lm",
                f"{ROOT / 'tests' / 'lms.py'}:fewshot", "--no-log", "--output", str(output), "--json"])  # fmt: skip
    assert code in (0, 1)
    return output


def test_an_eval_output_is_one_input_per_trace_gold_shown_each_version_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = eval_output(tmp_path, lms.TRACES[:2])
    capsys.readouterr()
    items = read_inputs([output], TRIAGE)
    assert len(items) == 2
    item = items[0]
    assert item.source == f"{output}:1" and item.gold_source == f"{tmp_path / 'golden.jsonl'}:1"
    assert item.proposal.label == "gold" and [a.label for a in item.alternatives] == ["v1", "naive"]
    assert item.proposal.names == tuple(step["node"] for step in lms.TRACES[0])
    assert [a.label for a in item.disagreeing()] == ["naive"]  # few-shot: right with v1's demos, wrong without


def test_an_eval_outputs_gold_that_is_gone_shows_the_first_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = eval_output(tmp_path, lms.TRACES[:1])
    capsys.readouterr()
    (tmp_path / "golden.jsonl").unlink()
    (item,) = read_inputs([output], TRIAGE)
    assert item.proposal.label == "v1" and [a.label for a in item.alternatives] == ["naive"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json\n", ":1: invalid JSON"),
        (b"\xff\xfe binary\n", ":1: not UTF-8 text"),
        (b'{"trace": []}\n', ":1: expected a recorded run"),
        (b'[1, 2]\n', ":1: expected a recorded run"),
        (b'\n{"customer_email": "a@b.c", "text": "hi"}\n', ":2: expected a recorded run"),
        (b'{"trace": [{"node": "Nope", "fields": {}}]}\n', ":1: step 1: unknown node 'Nope'"),
        (b"id,text\n1,hello\n", ":1: invalid JSON"),
    ],
    ids=["not-json", "not-utf8", "empty-trace", "not-an-object", "a-run-input-not-a-run", "foreign-graph", "csv"],
)
def test_an_input_that_is_not_a_trace_of_the_graph_is_one_error_naming_its_line(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(BaeInputError) as caught:
        read_inputs([bad], TRIAGE)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"{bad}{reason}"), caught.value.message


def test_a_missing_or_empty_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(BaeInputError, match="no such file"):
        read_inputs([tmp_path / "nope.jsonl"], TRIAGE)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BaeInputError, match="is empty"):
        read_inputs([tmp_path / "empty.jsonl"], TRIAGE)


# -- order --------------------------------------------------------------------------------------------
def test_uncertain_puts_the_least_confident_first_and_the_unknown_last(tmp_path: Path) -> None:
    items = read_inputs([record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:6])], TRIAGE)
    unknown = read_inputs([record(tmp_path / "u.jsonl", lms.triage_lm(), TICKETS[6:8])], TRIAGE)
    for index, item in enumerate([*items, *unknown]):
        item.index = index
    queue = ordered([*items, *unknown], "uncertain")
    sure = [item.confidence for item in queue[:6]]
    assert sure == sorted(sure) and all(s is not None for s in sure)
    assert [item.confidence for item in queue[6:]] == [None, None]
    assert [item.index for item in ordered(queue, "file")] == list(range(8))


def test_disagree_puts_the_answers_others_contradict_first(tmp_path: Path) -> None:
    items = read_inputs([record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:4])], TRIAGE)
    wrong = Answer("teacher", tuple(TRIAGE.run(TRIAGE.start(**TICKETS[3]), lm=DSPyBackend(review_lms.student()),
                                               **LOADED.deps).trace))  # fmt: skip
    items[3].alternatives = [wrong]
    items[1].alternatives = [items[1].proposal]  # agrees
    assert ordered(items, "disagree")[0].index == 3


# -- the draft ----------------------------------------------------------------------------------------
class Request(Node):
    """A customer's request."""

    text: str

    def __call__(self, lm: Any) -> Sort:
        return Sort(text=self.text)


class Sort(Node):
    """Decide how to answer the request, or that it needs none."""

    text: Annotated[str, Context("the request")]

    def __call__(self, lm: Any) -> Quick | Deep | None: ...


class Quick(Node):
    """A quick answer."""

    text: Annotated[str, Context("the request")]
    mood: Literal["calm", "urgent"]
    urgent: bool
    note: str

    def __call__(self, lm: Any) -> FollowUp: ...


class Deep(Node):
    """A deep answer."""

    text: Annotated[str, Context("the request")]
    mood: Literal["calm", "urgent"]
    depth: int


class FollowUp(Node):
    """A follow-up in the customer's mood."""

    mood: Annotated[str, Context("how the customer feels")]
    reply: str


TOY = Graph(start=Request)


def toy_trace(route: str = "Quick") -> tuple[Node, ...]:
    lm = ScriptedLM(make={"Quick": {"mood": "calm", "urgent": False, "note": "soon"}, "FollowUp": {"reply": "hi"},
                          "Deep": {"mood": "urgent", "depth": 3}}, choose={"Sort": route})  # fmt: skip
    return tuple(TOY.run(Request(text="help"), lm=DSPyBackend(lm)).trace)


def test_the_draft_offers_what_the_types_allow_and_nothing_made_by_code() -> None:
    draft = Draft.of(TOY, toy_trace())
    slots = draft.slots()
    assert [(s.position, s.field, s.options) for s in slots] == [
        (1, None, ("Quick", "Deep", "None")),  # Sort's route: its successors, and None (it may end)
        (2, "mood", ("calm", "urgent")),
        (2, "urgent", (True, False)),
        (2, "note", None),  # open text
        (3, "reply", None),
    ]  # Request's fields are the input, Sort was made by code: nothing to change there
    assert [draft.value(s) for s in slots] == ["Quick", "calm", False, "soon", "hi"]


def test_a_context_field_follows_a_change_upstream() -> None:
    draft = Draft.of(TOY, toy_trace())
    draft.choose(Slot(2, "mood", ("calm", "urgent")), 1)
    assert draft.build()[3].mood == "urgent"  # FollowUp.mood is Quick.mood, copied along as a run copies it


def test_rerouting_prefills_from_a_suggestion_then_by_name_and_asks_for_the_rest() -> None:
    quick = toy_trace("Quick")
    draft = Draft.of(TOY, quick)
    draft.reroute(1, "Deep")
    assert draft.names == ["Request", "Sort", "Deep"]  # the rest of the trace went with the old route
    assert draft.steps[2].fields == {"mood": "calm"}  # by name from the replaced Quick
    assert [s.field for s in draft.missing()] == ["depth"]
    with pytest.raises(ReviewError, match="depth needs a value"):
        draft.build()
    suggested = Draft.of(TOY, quick, [toy_trace("Deep")])
    suggested.reroute(1, "Deep")
    assert suggested.steps[2].fields == {"mood": "urgent", "depth": 3}  # the suggestion's Deep comes first
    assert suggested.build()[-1] == toy_trace("Deep")[-1]


def test_rerouting_to_a_node_with_one_successor_continues_the_trace() -> None:
    draft = Draft.of(TOY, toy_trace("Deep"))
    draft.reroute(1, "Quick")
    assert draft.names == ["Request", "Sort", "Quick", "FollowUp"]
    assert {s.field for s in draft.missing()} == {"urgent", "note", "reply"}  # mood came from Deep by name


def test_ending_the_run_early_is_a_route_where_the_node_may_end() -> None:
    draft = Draft.of(TOY, toy_trace())
    route = draft.slots()[0]
    draft.choose(route, 2)
    assert draft.names == ["Request", "Sort"] and draft.value(route) == ROUTE_END
    assert [type(n).__name__ for n in draft.build()] == ["Request", "Sort"]


def test_an_edit_is_checked_against_the_fields_type() -> None:
    draft = Draft.of(TOY, toy_trace("Deep"))
    depth = next(s for s in draft.slots() if s.field == "depth")
    draft.edit(depth, "7")
    assert draft.value(depth) == 7
    with pytest.raises(ReviewError, match="depth: Input should be a valid integer"):
        draft.edit(depth, "deep")
    mood = next(s for s in draft.slots() if s.field == "mood")
    with pytest.raises(ReviewError, match="Input should be 'calm' or 'urgent'"):
        draft.edit(mood, "angry")
    draft.edit(mood, "calm")  # a bare word for a closed field is fine
    with pytest.raises(ReviewError, match="chosen with its number"):
        draft.edit(draft.slots()[0], "Quick")
    with pytest.raises(ReviewError, match="no option 4"):
        draft.choose(draft.slots()[0], 3)
    assert draft.value(depth) == 7 and draft.value(mood) == "calm"


def test_a_missing_field_reads_missing_until_given() -> None:
    draft = Draft.of(TOY, toy_trace("Quick"))
    draft.reroute(1, "Deep")
    depth = next(s for s in draft.slots() if s.field == "depth")
    assert draft.value(depth) is MISSING
    draft.edit(depth, "2")
    assert draft.missing() == []



class Question(Node):
    """A question."""

    text: str

    def __call__(self, lm: Any) -> Desk | Shelf: ...


class Desk(Node):
    """A desk for the question."""

    size: int

    def __call__(self, lm: Any) -> Shelf | Bin:  # routed by code: a draft cannot choose for it
        return Shelf(size=self.size) if self.size > 2 else Bin()


class Shelf(Node):
    """Where it ends up."""

    size: int


class Bin(Node):
    """Thrown away."""


def test_a_reroute_to_a_node_routed_by_its_own_code_cannot_be_saved_half_done() -> None:
    lm = ScriptedLM(make={"Shelf": {"size": 1}, "Desk": {"size": 3}}, choose={"Question": "Shelf"})
    desks = Graph(start=Question)
    draft = Draft.of(desks, tuple(desks.run(Question(text="where?"), lm=DSPyBackend(lm)).trace))
    draft.reroute(0, "Desk")
    draft.edit(next(s for s in draft.slots() if s.field == "size"), "3")
    assert draft.missing() == []  # nothing a person could give: what comes next is the code's
    with pytest.raises(ReviewError, match="ends at Desk, which cannot end a run: Desk is routed by its own code"):
        draft.build()

# -- decisions ----------------------------------------------------------------------------------------
def test_accept_writes_the_trace_with_its_provenance_and_goes_on(tmp_path: Path) -> None:
    session = session_of(tmp_path, review_lms.confident(), TICKETS[:2])
    decision = session.accept()
    assert decision.kind == "accepted" and session.position == 1
    (line,) = gold_lines(tmp_path)
    assert line["trace"] == [{"node": s["node"], "fields": s["fields"]} for s in lms.TRACES[0]]
    review = line["review"]
    assert review["source"] == f"{tmp_path / 'recorded.jsonl'}:1" and review["decision"] == "accepted"
    assert review["changes"] == [] and review["recorded"]["versions"] == ["v1"]
    assert review["recorded"]["confidence"] == review_lms.sureness(_call(TICKETS[0]["text"]))
    assert "T" in review["reviewed_at"]


def test_a_change_is_written_as_what_changed(tmp_path: Path) -> None:
    session = session_of(tmp_path, review_lms.student(), TICKETS[:1])  # BillingIssue, wrong fields
    gold = lms.TRACES[0][-1]["fields"]
    session.choose(slot(session, "priority"), ["low", "medium", "high"].index(gold["priority"]))
    session.choose(slot(session, "refund_requested"), 0 if gold["refund_requested"] else 1)
    assert session.accept().kind == "changed"
    (line,) = gold_lines(tmp_path)
    assert line["trace"][-1]["fields"] == gold
    assert line["review"]["changes"] == [
        {"step": 3, "node": "BillingIssue", "field": "priority", "from": "low", "to": gold["priority"]},
        {"step": 3, "node": "BillingIssue", "field": "refund_requested", "from": False, "to": True},
    ]


def test_a_reroute_is_written_as_a_route_change(tmp_path: Path) -> None:
    account = next(i for i, t in enumerate(lms.TRACES) if t[-1]["node"] == "AccountIssue")
    session = session_of(tmp_path, review_lms.student(), [TICKETS[account]])
    session.choose(slot(session, None), 2)  # AccountIssue
    with pytest.raises(ReviewError, match="action needs a value"):
        session.accept()  # a saved trace is always complete
    session.choose(slot(session, "action"), 0)
    session.accept()
    (line,) = gold_lines(tmp_path)
    assert line["review"]["changes"] == [{"step": 3, "route": ["BillingIssue", "AccountIssue"]}]
    assert line["trace"][-1] == {"node": "AccountIssue", "fields": {**lms.TRACES[account][-1]["fields"] | {
        "priority": "low", "action": "reset password"}}}  # fmt: skip


def test_skip_writes_nothing_and_undo_takes_back_edits_then_decisions(tmp_path: Path) -> None:
    session = session_of(tmp_path, review_lms.student(), TICKETS[:3])
    session.accept()
    session.skip()
    priority = slot(session, "priority")
    session.choose(priority, 2)
    assert session.draft is not None and session.draft.value(priority) == "high"
    assert session.undo() == "change undone" and session.draft.value(priority) == "low"
    assert session.undo().startswith("skipped undone") and session.position == 1
    assert len(gold_lines(tmp_path)) == 1
    assert session.undo().startswith("accepted undone") and session.position == 0
    assert gold_lines(tmp_path) == [] and session.counts.accepted == 0
    with pytest.raises(ReviewError, match="nothing to undo"):
        session.undo()


def test_undo_refuses_when_the_gold_file_changed_behind_its_back(tmp_path: Path) -> None:
    session = session_of(tmp_path, review_lms.confident(), TICKETS[:2])
    session.accept()
    with open(tmp_path / "gold.jsonl", "a") as handle:
        handle.write(json.dumps({"trace": lms.TRACES[5]}) + "\n")
    with pytest.raises(ReviewError, match="no longer the last"):
        session.undo()
    assert len(gold_lines(tmp_path)) == 2


def test_a_session_resumes_where_the_gold_file_left_off(tmp_path: Path) -> None:
    first = session_of(tmp_path, review_lms.confident(), TICKETS[:4])
    first.accept()
    first.skip()
    first.accept()
    items = read_inputs([tmp_path / "recorded.jsonl"], TRIAGE)
    again = ReviewSession.start(TRIAGE, items, GoldFile(tmp_path / "gold.jsonl"))
    assert again.already_reviewed == 2 and [i.source.rsplit(":", 1)[1] for i in again.queue] == ["2", "4"]
    assert again.summary()["remaining"] == 2


def test_the_gold_file_loads_as_training_data_and_compile_takes_it_beside_the_trainset(tmp_path: Path) -> None:
    from bae.compiler import CompileOptions, compile_graph

    session = session_of(tmp_path, review_lms.student(), TICKETS[:8])
    for _ in range(8):
        session.choose(slot(session, "priority"), 2)
        session.accept()
    reviewed = load_dataset(tmp_path / "gold.jsonl", TRIAGE)
    assert len(reviewed.traces) == 8
    train = ROOT / "examples" / "support_triage.train.jsonl"
    report = compile_graph(LOADED, lms.fewshot(), CompileOptions(trainset=[train, tmp_path / "gold.jsonl"],
                                                                 out=tmp_path / "compiled"))  # fmt: skip
    dataset = report.manifest["dataset"]
    assert dataset["traces"] == 93 and (dataset["train"], dataset["dev"]) == (64 + 6, 21 + 2)  # each file split
    assert [f["traces"] for f in dataset["files"]] == [85, 8]
    alone = compile_graph(LOADED, lms.fewshot(), CompileOptions(trainset=train, out=tmp_path / "alone"))
    assert alone.manifest["dataset"]["dev"] == 21  # the first file's dev split is the same either way


def test_auto_accept_writes_the_answers_every_other_answer_agrees_with(tmp_path: Path) -> None:
    tickets = [TICKETS[2], TICKETS[3], TICKETS[0], TICKETS[1]]
    session = session_of(tmp_path, review_lms.confident(), tickets)
    teacher = open_teacher(f"{ROOT / 'tests' / 'review_lms.py'}:student", LOADED, None, None, LMSettings())
    teacher.suggest(session.queue[2:], ThreadExecutor(2))  # disagrees with the last two (priority high, a refund)
    for item in session.queue[:2]:
        item.alternatives.insert(0, Answer("teacher", item.proposal.nodes))  # agrees with the first two
    assert session.auto_accept_agreeing() == 2
    assert [line["review"]["decision"] for line in gold_lines(tmp_path)] == ["auto-accepted"] * 2
    assert gold_lines(tmp_path)[0]["review"]["agreed_with"] == ["teacher"]
    assert [i.source.rsplit(":", 1)[1] for i in session.queue] == ["3", "4"] and session.counts.auto_accepted == 2


def test_adopting_the_teachers_answer_is_one_step(tmp_path: Path) -> None:
    session = session_of(tmp_path, review_lms.student(), TICKETS[:1])
    teacher = open_teacher(f"{ROOT / 'tests' / 'lms.py'}:oracle", LOADED, None, None, LMSettings())
    assert teacher.suggest(session.queue, ThreadExecutor(1)) is None
    session._open()
    assert session.adopt().label.startswith("teacher ")
    assert session.accept().kind == "changed"
    (line,) = gold_lines(tmp_path)
    assert line["trace"] == [{"node": s["node"], "fields": s["fields"]} for s in lms.TRACES[0]]
    assert line["review"]["adopted"].startswith("teacher ")


def test_a_version_teacher_needs_its_compiled_root_and_a_teacher_that_is_down_says_so(tmp_path: Path) -> None:
    with pytest.raises(BaeInputError, match="give --compiled DIR"):
        open_teacher("v1", LOADED, None, None, LMSettings())
    version = open_teacher("v1", LOADED, ROOT / "compiled", f"{ROOT / 'tests' / 'lms.py'}:oracle", LMSettings())
    assert version.label == "teacher v1"
    session = session_of(tmp_path, review_lms.student(), TICKETS[:3])
    down = open_teacher(f"{ROOT / 'tests' / 'review_lms.py'}:down", LOADED, None, None, LMSettings())
    down.runtime.backend.backoff_s = 0.0  # type: ignore[attr-defined]
    failure = down.suggest(session.queue, ThreadExecutor(1))
    assert isinstance(failure, BaeLMError) and "still failing" in failure.message
