"""The screen of ``bae review``: a ``bae.review.ReviewSession`` drawn, and keys turned into its methods.

Thin on purpose: what a key does to the trace, the queue or the gold file is the session's (tested
without a terminal); here is only where things sit on the screen and which key calls what.
Everything shown comes from the graph's types through the session's draft: each LM-made step with its
fields, each closed field and route with every allowed option numbered, the chosen one marked.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from bae.node import node_json, spec_of
from bae.review import MISSING, Answer, ReviewError, ReviewSession, Slot, agree
from bae_cli.app import INTERRUPTED

CHOSEN, OTHER, FOCUS = "●", "○", "▸"


def shown(value: Any) -> str:
    """A field value as the screen shows it: text as it is, anything else as JSON."""
    if value is MISSING:
        return "?"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _same_node(answer: Answer | None, position: int, name: str) -> bool:
    """Whether the answer a draft started from has the draft's node at ``position`` (its calls made it)."""
    return answer is not None and position < len(answer.names) and answer.names[position] == name


def _calls_line(answer: Answer | None, position: int) -> str:
    """Which predictors made the step, from which version, how sure (as the run recorded them)."""
    if answer is None or answer.nodes is None:
        return ""
    parts = []
    for call in answer.calls.get(position, []):
        confidence = call.get("confidence")
        sure = f", confidence {confidence:.2f}" if isinstance(confidence, int | float) else ""
        parts.append(f"{call.get('predictor')} {call.get('version')}{sure}")
    return "; ".join(parts)


class EditScreen(ModalScreen[str | None]):
    """One field's value typed anew: Enter keeps it, Escape leaves it as it was."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = "EditScreen { align: center middle; } #edit { width: 80%; border: tall $accent; }"

    def __init__(self, label: str, value: str) -> None:
        super().__init__()
        self.label, self.value = label, value

    def compose(self) -> ComposeResult:
        yield Input(self.value, placeholder=self.label, id="edit")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ReviewScreen(Screen[None]):
    """One input at a time: the header, the input and the trace, the other answers, a message, the keys."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "accept", "accept"),
        Binding("1", "choose(1)", "choose", key_display="1-9"),
        *(Binding(str(n), f"choose({n})", show=False) for n in range(2, 10)),
        Binding("tab,down", "move(1)", "next", key_display="tab/↓"),
        Binding("shift+tab,up", "move(-1)", "previous", show=False),
        Binding("e", "edit", "edit"),
        Binding("a", "adopt", "take suggestion"),
        Binding("s", "skip", "skip"),
        Binding("u", "undo", "undo"),
        Binding("q", "leave", "save & quit"),
    ]
    DEFAULT_CSS = """
    #header { background: $boost; padding: 0 1; height: auto; }
    #body { height: 1fr; }
    #trace { width: 3fr; padding: 0 1; }
    #others { width: 2fr; padding: 0 1; border-left: solid $primary; }
    #message { height: auto; padding: 0 1; }
    """

    def __init__(self, session: ReviewSession) -> None:
        super().__init__()
        self.session = session
        self.focus_at = 0
        self.message = Text("")

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Horizontal(id="body"):
            with VerticalScroll(id="trace"):
                yield Static(id="steps")
            with VerticalScroll(id="others"):
                yield Static(id="answers")
        yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_all()

    # -- drawing -------------------------------------------------------------------------------
    def refresh_all(self) -> None:
        slots = self.session.slots()
        self.focus_at = min(self.focus_at, max(len(slots) - 1, 0))
        self.query_one("#header", Static).update(self._header())
        self.query_one("#steps", Static).update(self._steps(slots))
        self.query_one("#answers", Static).update(self._answers())
        self.query_one("#message", Static).update(self.message)

    def _header(self) -> Text:
        s = self.session
        counts = s.counts
        total = len(s.queue)
        at = f"{min(s.position + 1, total)} of {total}" if total else "nothing to review"
        line = Text.assemble(
            ("bae review  ", "bold"),
            (at, "bold cyan"),
            f"   accepted {counts.accepted}  changed {counts.changed}  skipped {counts.skipped}"
            f"  auto-accepted {counts.auto_accepted}   reviewed before {s.already_reviewed}   -> {s.out.path}",
        )
        if s.notice:
            line.append(f"\n{s.notice}", style="yellow")
        return line

    def _steps(self, slots: list[Slot]) -> Group | Text:
        s, item, draft = self.session, self.session.current, self.session.draft
        if item is None:
            done = f"All {len(s.queue)} inputs decided. q quits (u takes the last decision back)."
            return Text(done, style="bold")
        parts: list[Any] = [Text.assemble(("input ", "bold"), (item.source, "dim"))]
        seen = node_json(item.start)  # a field copied along unchanged is shown once, where it first appears
        for name, value in seen.items():
            parts.append(Text(f"  {name}: {shown(value)}"))
        if draft is None:
            assert s.shown is not None
            parts.append(Text(f"\n{s.shown.label} failed: {s.shown.error}", style="red"))
            parts.append(Text(f"  path: {' -> '.join(s.shown.names)}   (a takes another answer, s skips)"))
            return Group(*parts)
        label = s.shown.label if s.shown is not None else ""
        parts.append(Text.assemble(("\npath ", "bold"), " -> ".join(draft.names), (f"   ({label})", "dim")))
        focused = slots[self.focus_at] if slots else None
        for position, name in enumerate(draft.names):
            if position == 0:
                continue
            made = draft.lm_made(position)
            calls = _calls_line(s.shown, position) if _same_node(s.shown, position, name) else ""
            head = Text.assemble(("\n" + name, "bold green" if made else "bold"))
            head.append(f"   {'made by ' + calls if calls else ('LM-made' if made else 'made by code')}", style="dim")
            parts.append(head)
            fields = draft.fields_of(position)
            generated = {f.name for f in spec_of(draft.steps[position].cls).generated} if made else set()
            for field, value in fields.items():
                if field not in generated and seen.get(field, MISSING) != value:
                    parts.append(Text(f"    {field}: {shown(value)}", style="dim"))
                    seen[field] = value
            for slot in (x for x in slots if x.position == position):
                parts.append(self._slot(slot, slot == focused))
        return Group(*parts)

    def _slot(self, slot: Slot, focused: bool) -> Text:
        draft = self.session.draft
        assert draft is not None
        value = draft.value(slot)
        text = Text(f"  {FOCUS if focused else ' '} ", style="bold yellow")
        text.append(f"{'next step' if slot.is_route else slot.field}: ", style="bold" if focused else "")
        if slot.options is None:
            text.append(shown(value), style="reverse" if focused else "")
            text.append("  (e edits)" if focused else "", style="dim")
            return text
        for number, option in enumerate(slot.options, start=1):
            chosen = option == value
            mark = CHOSEN if chosen else OTHER
            style = ("bold reverse" if focused else "bold") if chosen else ""
            text.append(f"{number if number <= 9 else ' '} {mark} {shown(option)}", style=style)
            text.append("   ")
        if value is MISSING:
            text.append("needs a value", style="red")
        return text

    def _answers(self) -> Group | Text:
        item, s = self.session.current, self.session
        if item is None:
            return Text("")
        answers = [a for a in [item.proposal, *item.alternatives] if a is not s.shown]
        if not answers:
            return Text("no other answer (--suggest vN or LM gives one)", style="dim")
        parts: list[Any] = [Text("other answers (a takes the next)", style="bold")]
        for answer in answers:
            if answer.nodes is None:
                parts.append(Text(f"\n{answer.label}: failed: {answer.error}", style="red"))
                continue
            same = s.shown is not None and agree(answer, s.shown)
            verdict = ("   agrees", "green") if same else ("   differs", "yellow")
            parts.append(Text.assemble(("\n" + answer.label, "bold"), verdict))
            parts.append(Text(" -> ".join(answer.names)))
            for position, node in enumerate(answer.nodes):
                if position and spec_of(type(answer.nodes[position - 1])).routed:
                    data = node.model_dump(mode="json")
                    made = {f.name: data.get(f.name) for f in spec_of(type(node)).generated}
                    fields = ", ".join(f"{k} {shown(v)}" for k, v in made.items())
                    sure = _calls_line(answer, position)
                    line = f"  {type(node).__name__}: {fields}" + (f"  ({sure})" if sure else "")
                    parts.append(Text(line, style="dim" if same else ""))
        return Group(*parts)

    def say(self, message: str, error: bool = False) -> None:
        self.message = Text(message, style="red" if error else "green")

    # -- keys -----------------------------------------------------------------------------------
    def _focused(self) -> Slot | None:
        slots = self.session.slots()
        return slots[self.focus_at] if slots else None

    def _after_change(self, done: str) -> None:
        """Move to the first slot still waiting for a value, if a change left one (a re-route's new fields)."""
        draft = self.session.draft
        waiting = draft.missing() if draft is not None else []
        if waiting:
            self.focus_at = self.session.slots().index(waiting[0])
            self.say(f"{done}; {waiting[0].field or 'the next step'} needs a value: choose it or press e")
        else:
            self.say(done)

    def _attempt(self, action: Any) -> Any:
        try:
            return action()
        except ReviewError as exc:
            self.say(str(exc), error=True)
            return None
        finally:
            self.refresh_all()

    def action_move(self, step: int) -> None:
        slots = self.session.slots()
        if slots:
            self.focus_at = (self.focus_at + step) % len(slots)
        self.refresh_all()

    def action_choose(self, number: int) -> None:
        slot = self._focused()
        if slot is None:
            self.say("nothing to choose here", error=True)
            self.refresh_all()
            return

        def choose() -> None:
            self.session.choose(slot, number - 1)
            assert slot.options is not None
            self._after_change(f"{slot.field or 'next step'}: {shown(slot.options[number - 1])}")

        self._attempt(choose)

    def action_edit(self) -> None:
        slot = self._focused()
        draft = self.session.draft
        if slot is None or draft is None or slot.is_route:
            self.say("e edits a field: move to one with tab", error=True)
            self.refresh_all()
            return
        value = draft.value(slot)

        def edited(text: str | None) -> None:
            if text is not None:
                self._attempt(lambda: (self.session.edit(slot, text), self._after_change(f"{slot.field} edited")))

        self.app.push_screen(EditScreen(f"{slot.field}", "" if value is MISSING else shown(value)), edited)

    def action_adopt(self) -> None:
        def adopt() -> None:
            answer = self.session.adopt()
            self.focus_at = 0
            self.say(f"showing {answer.label}'s answer (Enter accepts it; a: the next; u: back)")

        self._attempt(adopt)

    def action_accept(self) -> None:
        def accept() -> None:
            decision = self.session.accept()
            self.focus_at = 0
            self.say(f"{decision.kind}: {decision.item.source}")

        if self.session.done:
            self.say("all decided: q quits", error=True)
            self.refresh_all()
            return
        self._attempt(accept)
        draft = self.session.draft
        if draft is not None and draft.missing() and self.message.style == "red":
            self.focus_at = self.session.slots().index(draft.missing()[0])
            self.refresh_all()

    def action_skip(self) -> None:
        def skip() -> None:
            decision = self.session.skip()
            self.focus_at = 0
            self.say(f"skipped: {decision.item.source}")

        self._attempt(skip)

    def action_undo(self) -> None:
        self._attempt(lambda: self.say(self.session.undo()))

    def action_leave(self) -> None:
        self.app.exit(self.session.summary())


class ReviewApp(App[dict[str, Any]]):
    """``bae review``'s app: the review screen, and Ctrl-C, which ends the session at once (exit 130):
    every accepted trace is already in the gold file."""

    TITLE = "bae review"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+c", "interrupt", show=False, priority=True)]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, session: ReviewSession) -> None:
        super().__init__()
        self.session = session

    def on_mount(self) -> None:
        self.push_screen(ReviewScreen(self.session))

    def action_interrupt(self) -> None:
        self.session.interrupted = True
        self.exit(self.session.summary(), return_code=INTERRUPTED)


__all__ = ["ReviewApp"]
