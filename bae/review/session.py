"""A review session: the queue of inputs in the order asked for, each decision, what it writes, and undo.

The screen (``bae_cli.review_app``) only draws a session and turns keys into its methods, so everything
a decision does is here and tested without a terminal:

* **order**: ``file`` (as read), ``uncertain`` (the least confident answer first: an answer's confidence is
  its least confident LM call; answers without one last), ``disagree`` (answers other answers contradict
  first, the most contradicted first, then by confidence).
* **accept** builds the draft into a trace the dataset loader accepts and appends it to the gold file
  at once, with its provenance, so a session stopped any way (``q``, Ctrl-C, a crash) keeps every trace
  accepted; **skip** writes nothing (a skipped input comes back next session); **undo** takes back the
  last change to the draft, or else the last decision (its line is removed from the gold file).
* **auto-accept** writes, without asking, every input whose answer every other answer agrees with.

A reviewed line is a dataset line (``bae compile --trainset`` loads it) with a ``review`` object beside
the trace: the ``source`` line reviewed (``file:line``; for an eval output also the ``gold`` dataset line),
``reviewed_at``, the ``decision`` (``accepted``: as shown; ``changed``; ``auto-accepted``), the
``changes`` made (route and field changes, steps counted from 1), the answer ``adopted`` (a suggestion
taken) or ``agreed_with`` (auto-accepted), and what the recorded answer said of itself (its versions and
confidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bae.graph import Graph
from bae.node import Node, steps_json
from bae.review.draft import Draft, ReviewError, Slot
from bae.review.files import GoldFile
from bae.review.items import Answer, ReviewItem, made

ORDERS = ("file", "uncertain", "disagree")
ACCEPTED, CHANGED, SKIPPED, AUTO_ACCEPTED = "accepted", "changed", "skipped", "auto-accepted"


def ordered(items: list[ReviewItem], order: str) -> list[ReviewItem]:
    """The items in review order (see the module doc)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")

    def sureness(item: ReviewItem) -> tuple[bool, float]:
        confidence = item.confidence
        return confidence is None, confidence if confidence is not None else 0.0

    if order == "uncertain":
        return sorted(items, key=lambda i: (*sureness(i), i.index))
    if order == "disagree":
        return sorted(items, key=lambda i: (-len(i.disagreeing()), *sureness(i), i.index))
    return sorted(items, key=lambda i: i.index)


def changes(before: tuple[Node, ...] | None, after: tuple[Node, ...]) -> list[dict[str, Any]]:
    """What a reviewed trace changed in the answer shown: the first route that differs (steps after it are
    new), and each LM-made field that differs on the way there. Steps are counted from 1."""
    old = made(before) if before is not None else []
    new = made(after)
    found: list[dict[str, Any]] = []
    for position in range(max(len(old), len(new))):
        was = old[position] if position < len(old) else None
        now = new[position] if position < len(new) else None
        if was is None or now is None or was[0] != now[0]:
            step = {"step": position + 1, "route": [was[0] if was else None, now[0] if now else None]}
            return [*found, step]
        for name, value in now[1].items():
            if was[1].get(name) != value:
                change = {"step": position + 1, "node": now[0], "field": name, "from": was[1].get(name), "to": value}
                found.append(change)
    return found


@dataclass
class Decision:
    """One decision on an input: what it was, the line it wrote (None: skipped) and the draft it was made on."""

    item: ReviewItem
    kind: str
    written: bytes | None
    draft: Draft | None = None
    shown: Answer | None = None


@dataclass
class Counts:
    accepted: int = 0
    changed: int = 0
    skipped: int = 0
    auto_accepted: int = 0

    def add(self, kind: str, step: int = 1) -> None:
        attribute = kind.replace("-", "_")
        setattr(self, attribute, getattr(self, attribute) + step)


@dataclass
class ReviewSession:
    """The inputs not reviewed yet (``queue``, in order), the one on screen, and every decision made."""

    graph: Graph
    out: GoldFile
    queue: list[ReviewItem]
    already_reviewed: int = 0
    inputs: int = 0
    notice: str | None = None  # said on screen: e.g. a teacher that is down
    position: int = 0
    counts: Counts = field(default_factory=Counts)
    decisions: list[Decision] = field(default_factory=list)
    interrupted: bool = False
    draft: Draft | None = None  # the trace on screen as changed so far (None: its run failed)
    shown: Answer | None = None  # the answer the draft started from
    edits: list[tuple[Draft, Answer]] = field(default_factory=list)  # what undo restores, last first

    @classmethod
    def start(cls, graph: Graph, items: list[ReviewItem], out: GoldFile, order: str = "file") -> ReviewSession:
        """A session over ``items``, leaving out the inputs ``out`` already holds (so a review resumes)."""
        reviewed = out.reviewed(graph)
        pending = [item for item in items if item.key not in reviewed]
        session = cls(graph, out, ordered(pending, order), len(items) - len(pending), len(items))
        session._open()
        return session

    # -- the input on screen ---------------------------------------------------------------------
    @property
    def current(self) -> ReviewItem | None:
        return self.queue[self.position] if self.position < len(self.queue) else None

    @property
    def done(self) -> bool:
        return self.current is None

    def _open(self, draft: Draft | None = None, shown: Answer | None = None) -> None:
        """Put the input at ``position`` on screen, as shown first, or as a decision left it (undo)."""
        self.edits = []
        item = self.current
        self.shown = shown or (item.proposal if item is not None else None)
        if item is None or self.shown is None:
            self.draft = None
        elif draft is not None:
            self.draft = draft
        else:
            self.draft = self._draft_of(item, self.shown)

    def _draft_of(self, item: ReviewItem, shown: Answer) -> Draft | None:
        others = [a.nodes for a in [item.proposal, *item.alternatives] if a is not shown and a.nodes is not None]
        return None if shown.nodes is None else Draft.of(self.graph, shown.nodes, others)

    def reorder(self, order: str) -> None:
        """Order the inputs not decided yet anew (a teacher's answers change what disagrees)."""
        self.queue[self.position :] = ordered(self.queue[self.position :], order)
        self._open()

    def slots(self) -> list[Slot]:
        return [] if self.draft is None else self.draft.slots()

    # -- changes to the draft (each undoable) -------------------------------------------------------
    def choose(self, slot: Slot, index: int) -> None:
        draft = self._editable()
        before = draft.copy()
        draft.choose(slot, index)
        self._changed(before)

    def edit(self, slot: Slot, text: str) -> None:
        draft = self._editable()
        before = draft.copy()
        draft.edit(slot, text)
        self._changed(before)

    def adopt(self) -> Answer:
        """Show the next other answer that is a whole trace (the teacher's, gold, a version's), and from there
        the one shown first again: one key takes a suggestion."""
        item = self.current
        if item is None or self.shown is None:
            raise ReviewError("nothing to review")
        answers = [a for a in [item.proposal, *item.alternatives] if a.nodes is not None]
        if len(answers) < 2 and self.shown in answers:
            raise ReviewError("no other answer to take (--suggest vN or LM gives one)")
        following = answers[(answers.index(self.shown) + 1) % len(answers)] if self.shown in answers else answers[0]
        before = (self.draft.copy() if self.draft is not None else None, self.shown)
        self.draft, self.shown = self._draft_of(item, following), following
        if before[0] is not None:
            self.edits.append((before[0], before[1]))
        return following

    def _editable(self) -> Draft:
        if self.draft is None:
            raise ReviewError("this run failed: press a to take another answer, or s to skip")
        return self.draft

    def _changed(self, before: Draft) -> None:
        assert self.shown is not None
        self.edits.append((before, self.shown))

    # -- decisions ---------------------------------------------------------------------------------
    def accept(self) -> Decision:
        """Write the draft as a reviewed trace and go to the next input."""
        item, draft = self.current, self._editable()
        assert item is not None and self.shown is not None
        nodes = draft.build()
        found = changes(item.proposal.nodes, nodes)
        kind = CHANGED if found else ACCEPTED
        adopted = self.shown.label if self.shown is not item.proposal else None
        written = self.out.append(reviewed_line(item, nodes, kind, found, adopted=adopted))
        return self._decided(Decision(item, kind, written, draft, self.shown))

    def skip(self) -> Decision:
        item = self.current
        if item is None:
            raise ReviewError("nothing to skip")
        return self._decided(Decision(item, SKIPPED, None, self.draft, self.shown))

    def _decided(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        self.counts.add(decision.kind)
        self.position += 1
        self._open()
        return decision

    def undo(self) -> str:
        """Take back the last change to the draft on screen, else the last decision; says which."""
        if self.edits:
            self.draft, self.shown = self.edits.pop()
            return "change undone"
        if not self.decisions:
            raise ReviewError("nothing to undo")
        decision = self.decisions[-1]
        if decision.written is not None and not self.out.remove_last(decision.written):
            raise ReviewError(f"{self.out.path} changed since that decision: its line is no longer the last")
        self.decisions.pop()
        self.counts.add(decision.kind, -1)
        self.position -= 1
        self._open(decision.draft, decision.shown)
        return f"{decision.kind} undone: {decision.item.source} is back"

    def auto_accept_agreeing(self) -> int:
        """Write every queued input whose answer all other answers agree with; they leave the queue."""
        kept: list[ReviewItem] = []
        for item in self.queue[self.position :]:
            nodes = item.proposal.nodes
            if nodes is None or not item.alternatives or item.disagreeing():
                kept.append(item)
                continue
            agreed = [a.label for a in item.alternatives]
            self.out.append(reviewed_line(item, nodes, AUTO_ACCEPTED, [], agreed_with=agreed))
            self.counts.add(AUTO_ACCEPTED)
        accepted = len(self.queue) - self.position - len(kept)
        self.queue[self.position :] = kept
        self._open()
        return accepted

    def summary(self) -> dict[str, Any]:
        """What the session did, as ``bae review --json`` prints it."""
        return {
            "out": str(self.out.path),
            "inputs": self.inputs,
            "already_reviewed": self.already_reviewed,
            "accepted": self.counts.accepted,
            "changed": self.counts.changed,
            "skipped": self.counts.skipped,
            "auto_accepted": self.counts.auto_accepted,
            "remaining": len(self.queue) - self.position,
            "interrupted": self.interrupted,
        }


def reviewed_line(
    item: ReviewItem,
    nodes: tuple[Node, ...],
    decision: str,
    found: list[dict[str, Any]],
    adopted: str | None = None,
    agreed_with: list[str] | None = None,
) -> dict[str, Any]:
    """A gold file's line: the trace in the dataset format, and how it was reviewed (see the module doc)."""
    review: dict[str, Any] = {"source": item.source}
    if item.gold_source is not None:
        review["gold"] = item.gold_source
    review.update(reviewed_at=datetime.now(UTC).isoformat(timespec="seconds"), decision=decision, changes=found)
    if adopted is not None:
        review["adopted"] = adopted
    if agreed_with is not None:
        review["agreed_with"] = agreed_with
    recorded = item.proposal
    if recorded.calls:
        review["recorded"] = {"versions": recorded.versions, "confidence": recorded.confidence}
    return {"trace": steps_json(nodes), "review": review}
