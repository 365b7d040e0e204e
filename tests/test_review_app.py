"""``bae review``'s app and command: keys driven headlessly through Textual's pilot, a real terminal (tmux and a
pty), and the command's refusals (no terminal, bad input, an --out it cannot write, a teacher that is down)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("textual")

from textual.widgets import Static

from bae.dataset import load_dataset
from bae.review import GoldFile, ReviewSession, read_inputs
from bae_cli.app import INTERRUPTED
from bae_cli.app import run as bae_run
from bae_cli.review_app import ReviewApp
from tests import lms, review_lms
from tests.cli import EXAMPLE, ROOT, environment
from tests.test_cli_basics import imported_by
from tests.test_review import TICKETS, TOY, TRIAGE, Draft, Quick, gold_lines, record

LMS = ROOT / "tests" / "review_lms.py"
ACCOUNT = next(i for i, t in enumerate(lms.TRACES) if t[-1]["node"] == "AccountIssue")


def steps(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"node": s["node"], "fields": s["fields"]} for s in trace]


def start(tmp_path: Path, tickets: list[dict[str, Any]], lm: Any = None) -> ReviewSession:
    recorded = record(tmp_path / "recorded.jsonl", lm or review_lms.student(), tickets)
    return ReviewSession.start(TRIAGE, read_inputs([recorded], TRIAGE), GoldFile(tmp_path / "gold.jsonl"))


def drive(session: ReviewSession, keys: Callable[[Any, ReviewApp], Awaitable[None]]) -> ReviewApp:
    """Run the app headless, ``keys`` pressing what a person would; returns the app once it exited."""
    app = ReviewApp(session)

    async def main() -> None:
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.pause()
            await keys(pilot, app)
            await pilot.pause()

    asyncio.run(main())
    return app


def screen_text(app: ReviewApp) -> str:
    """What the screen shows now, as text."""
    from rich.console import Console

    console = Console(width=140, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for widget in ("#header", "#steps", "#answers", "#message"):
        console.print(app.screen.query_one(widget, Static).content)
    return console.export_text()


def test_enter_accepts_as_shown_and_the_file_is_those_traces(tmp_path: Path) -> None:
    session = start(tmp_path, TICKETS[:3], review_lms.confident())
    shown: list[str] = []

    async def keys(pilot: Any, app: ReviewApp) -> None:
        shown.append(screen_text(app))
        await pilot.press("enter", "enter")
        shown.append(screen_text(app))
        await pilot.press("q")

    app = drive(session, keys)
    assert "1 of 3" in shown[0] and "3 of 3" in shown[1] and "accepted 2" in shown[1]
    for thing in ("Triage", "next step", "1 ● BillingIssue", "2 ○ TechnicalIssue", "3 ○ AccountIssue",
                  "priority", "refund_requested", "Triage.choice v1, confidence"):  # fmt: skip
        assert thing in shown[0], (thing, shown[0])
    assert [line["trace"] for line in gold_lines(tmp_path)] == [steps(t) for t in lms.TRACES[:2]]
    assert len(load_dataset(tmp_path / "gold.jsonl", TRIAGE).traces) == 2  # training data as it is
    assert app.return_code == 0 and app.return_value == {**session.summary(), "accepted": 2}


def test_a_digit_reroutes_and_the_new_steps_fields_are_asked_for(tmp_path: Path) -> None:
    session = start(tmp_path, [TICKETS[ACCOUNT]])  # the student sent it to BillingIssue
    gold = lms.TRACES[ACCOUNT][-1]["fields"]
    actions = ["reset password", "two-factor help", "change email", "close account"]
    priorities = ["low", "medium", "high"]
    seen: list[str] = []

    async def keys(pilot: Any, app: ReviewApp) -> None:
        await pilot.press("3")  # the route: AccountIssue
        seen.append(screen_text(app))
        await pilot.press("enter")  # refused: action has no value yet
        seen.append(screen_text(app))
        await pilot.press(str(actions.index(gold["action"]) + 1), "shift+tab")  # the action; back to priority
        await pilot.press(str(priorities.index(gold["priority"]) + 1), "enter", "q")

    drive(session, keys)
    assert "Ticket -> Triage -> AccountIssue" in seen[0] and "action needs a value" in seen[0]
    assert "needs a value (choose or edit it)" in seen[1]
    (line,) = gold_lines(tmp_path)
    assert line["trace"] == steps(lms.TRACES[ACCOUNT])
    assert line["review"]["changes"][0] == {"step": 3, "route": ["BillingIssue", "AccountIssue"]}


def test_e_edits_a_field_and_undo_takes_edits_then_decisions_back(tmp_path: Path) -> None:
    session = start(tmp_path, TICKETS[:2])

    async def keys(pilot: Any, app: ReviewApp) -> None:
        await pilot.press("tab", "e", *"high", "enter")  # priority, typed (the old value is selected: replaced)
        assert session.draft is not None and session.draft.value(session.slots()[1]) == "high"
        await pilot.press("u")  # the edit
        assert session.draft.value(session.slots()[1]) == "low"
        await pilot.press("e", *"medium", "enter", "enter")  # edited, accepted
        await pilot.press("u")  # the accept: its line leaves the file
        assert gold_lines(tmp_path) == [] and session.position == 0
        await pilot.press("enter", "q")  # accepted again, as the undo left it (priority medium)

    drive(session, keys)
    (line,) = gold_lines(tmp_path)
    assert line["trace"][-1]["fields"]["priority"] == "medium"
    assert line["review"]["changes"] == [
        {"step": 3, "node": "BillingIssue", "field": "priority", "from": "low", "to": "medium"}
    ]


def test_an_open_text_field_is_edited_as_text() -> None:
    draft = Draft.of(TOY, tuple(TOY.run(TOY.start(text="help"), lm=_toy_lm()).trace))
    note = next(s for s in draft.slots() if s.field == "note")
    draft.edit(note, "call back at 5")
    assert isinstance(draft.build()[2], Quick) and draft.build()[2].note == "call back at 5"


def _toy_lm() -> Any:
    from bae import DSPyBackend
    from bae.testing import ScriptedLM

    return DSPyBackend(ScriptedLM(make={"Quick": {"mood": "calm", "urgent": False, "note": "soon"},
                                        "FollowUp": {"reply": "hi"}}, choose={"Sort": "Quick"}))  # fmt: skip


def test_skip_writes_nothing_quit_and_resume_carries_on(tmp_path: Path) -> None:
    session = start(tmp_path, TICKETS[:3], review_lms.confident())

    async def first(pilot: Any, app: ReviewApp) -> None:
        await pilot.press("s", "enter", "q")  # skip 1, accept 2, quit

    app = drive(session, first)
    assert app.return_value is not None and app.return_value["skipped"] == 1 and app.return_value["remaining"] == 1
    assert [line["trace"] for line in gold_lines(tmp_path)] == [steps(lms.TRACES[1])]
    again = start(tmp_path, TICKETS[:3], review_lms.confident())  # the same record file, as it was
    assert again.already_reviewed == 1 and [i.source.rsplit(":", 1)[1] for i in again.queue] == ["1", "3"]

    async def second(pilot: Any, app: ReviewApp) -> None:
        await pilot.press("enter", "enter", "q")

    drive(again, second)
    assert [line["trace"] for line in gold_lines(tmp_path)] == [steps(lms.TRACES[i]) for i in (1, 0, 2)]


def test_ctrl_c_stops_at_once_and_keeps_every_accepted_trace(tmp_path: Path) -> None:
    session = start(tmp_path, TICKETS[:3], review_lms.confident())

    async def keys(pilot: Any, app: ReviewApp) -> None:
        await pilot.press("enter", "tab", "2", "ctrl+c")  # one accepted, one changed but not accepted

    app = drive(session, keys)
    assert app.return_code == INTERRUPTED and session.interrupted
    assert [line["trace"] for line in gold_lines(tmp_path)] == [steps(lms.TRACES[0])]


def test_a_takes_the_teachers_answer(tmp_path: Path) -> None:
    from bae.executor import ThreadExecutor
    from bae.lm_specs import LMSettings
    from bae.review import open_teacher
    from tests.test_review import LOADED

    session = start(tmp_path, [TICKETS[ACCOUNT]])
    teacher = open_teacher(f"{ROOT / 'tests' / 'lms.py'}:oracle", LOADED, None, None, LMSettings())
    teacher.suggest(session.queue, ThreadExecutor(1))
    session.notice = "a notice for the header"
    seen: list[str] = []

    async def keys(pilot: Any, app: ReviewApp) -> None:
        app.screen.refresh_all()  # type: ignore[attr-defined]
        seen.append(screen_text(app))
        await pilot.press("a")
        seen.append(screen_text(app))
        await pilot.press("enter", "q")

    drive(session, keys)
    assert "differs" in seen[0] and "a notice for the header" in seen[0]
    assert "(teacher bae/scripted)" in seen[1] and "recorded" in seen[1]  # shown now; the recorded one beside it
    (line,) = gold_lines(tmp_path)
    assert line["trace"] == steps(lms.TRACES[ACCOUNT]) and line["review"]["adopted"] == "teacher bae/scripted"


# -- the command --------------------------------------------------------------------------------------
def review(tmp_path: Path, *args: str) -> int:
    return bae_run(["review", EXAMPLE, *args])


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bae: error: "), lines
    return lines[0].removeprefix("bae: error: ")


def test_without_a_terminal_it_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:2])
    assert review(tmp_path, "--input", str(recorded), "--out", str(tmp_path / "gold.jsonl")) == 2
    assert one_error(capsys) == (
        "bae review is a full-screen app: run it in a terminal (or with --auto-accept-agreeing)"
    )
    assert not (tmp_path / "gold.jsonl").exists()


ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes whatever the permissions say


@pytest.mark.parametrize(
    "out",
    [
        "missing/gold.jsonl",
        ".",
        pytest.param("readonly.jsonl", marks=pytest.mark.skipif(ROOT_USER, reason="root may write a read-only file")),
    ],
)
def test_an_out_it_cannot_write_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readonly.jsonl").write_text("")
    (tmp_path / "readonly.jsonl").chmod(0o444)
    teacher = f"{LMS}:counting"
    code = review(tmp_path, "--input", "not-read.jsonl", "--out", out, "--suggest", teacher, "--auto-accept-agreeing")
    assert code == 2
    assert one_error(capsys).startswith(f"--out {out}")
    assert not (tmp_path / "teacher.calls").exists()  # the teacher was never asked, the input never read


def test_bad_input_is_one_line_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"trace": lms.TRACES[0]}) + "\n" + json.dumps({"trace": [{"node": "Oops"}]}) + "\n")
    assert review(tmp_path, "--input", str(bad), "--out", str(tmp_path / "g.jsonl"), "--auto-accept-agreeing") == 2
    assert one_error(capsys).startswith(f"{bad}:2: step 1: unknown node 'Oops'")
    assert review(tmp_path, "--input", str(bad), "--out", str(tmp_path / "g.jsonl"), "--order", "random") == 2
    assert "--order 'random': use one of file, uncertain, disagree" in one_error(capsys)


def test_auto_accept_without_a_terminal_writes_what_agrees_and_names_what_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The teacher (gold answers) agrees with the confident recordings and not with the student's."""
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:3])
    record(recorded, review_lms.student(), [TICKETS[ACCOUNT]])
    out = tmp_path / "gold.jsonl"
    args = ("--input", str(recorded), "--out", str(out), "--suggest", f"{ROOT / 'tests' / 'lms.py'}:oracle",
            "--auto-accept-agreeing", "--json")  # fmt: skip
    assert review(tmp_path, *args) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "out": str(out), "inputs": 4, "already_reviewed": 0, "accepted": 0, "changed": 0, "skipped": 0,
        "auto_accepted": 3, "remaining": 1, "interrupted": False,
    }  # fmt: skip
    assert captured.err.strip().splitlines()[-1] == (
        f"bae: error: 3 auto-accepted into {out}; 1 trace needs a person: run bae review in a terminal to review them"
    )
    assert [line["review"]["decision"] for line in gold_lines(tmp_path)] == ["auto-accepted"] * 3
    assert review(tmp_path, *args[:-1]) == 2  # resumed: nothing new to accept, the same one left; one line
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # above it, the teacher's progress bar
        f"bae: error: 0 auto-accepted into {out}; 1 trace needs a person: run bae review in a terminal to review them"
    )
    assert len(gold_lines(tmp_path)) == 3
    only_agreeing = tmp_path / "agreeing.jsonl"
    record(only_agreeing, review_lms.confident(), TICKETS[3:5])
    capsys.readouterr()
    assert review(tmp_path, "--input", str(only_agreeing), *args[2:]) == 0  # nothing left to ask: no terminal needed


def test_a_teacher_that_is_down_is_exit_4_when_its_answers_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:2])
    args = ("--input", str(recorded), "--out", str(tmp_path / "gold.jsonl"), "--suggest", f"{LMS}:down")
    assert review(tmp_path, *args, "--auto-accept-agreeing") == 4
    assert "LM still failing after 4 attempts" in capsys.readouterr().err
    assert not (tmp_path / "gold.jsonl").exists()


def test_comparing_needs_something_to_compare_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:2])
    assert review(tmp_path, "--input", str(recorded), "--out", str(tmp_path / "g.jsonl"), "--auto-accept-agreeing") == 2
    expected = "--auto-accept-agreeing compares answers: give --suggest vN or LM, or bae eval --output files"
    assert one_error(capsys) == expected


def test_textual_is_imported_by_bae_review_alone() -> None:
    for argv in (["--help"], ["review", "--help"], ["stats", "--help"], ["inspect", "--help"]):
        assert imported_by(argv, "m == 'textual' or m.startswith('textual.')") == [], argv


# -- a real terminal ----------------------------------------------------------------------------------
SIZE = (140, 45)
WANTED = ("PATH", "HOME", "PYTHONPATH", "TERM", "BAE_DEBUG", "LITELLM_LOCAL_MODEL_COST_MAP")  # no COLUMNS, LINES


def review_argv(tmp_path: Path, recorded: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bae_cli", "review", EXAMPLE, "--input", str(recorded), "--out",
            str(tmp_path / "gold.jsonl"), *extra]  # fmt: skip


class Terminal:
    """``bae review`` in a real terminal of 140 x 45: what it shows, keys sent to it, its exit status."""

    def text(self) -> str:
        raise NotImplementedError

    def keys(self, *keys: str) -> None:
        raise NotImplementedError

    def exit_status(self) -> int:
        raise NotImplementedError

    def app_pid(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def until(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.text()}"
            time.sleep(0.1)

    def shows(self, *things: str) -> None:
        self.until(" and ".join(things), lambda: all(thing in self.text() for thing in things))


class TmuxPane(Terminal):
    """A tmux pane: ``text`` is the screen as tmux draws it, so it checks what a person sees."""

    def __init__(self, tmp_path: Path, argv: list[str]) -> None:
        self.name = f"bae-review-test-{time.monotonic_ns()}"
        self.status = tmp_path / "status"
        env = " ".join(f"{k}={v}" for k, v in environment({"TERM": "xterm-256color"}).items() if k in WANTED)
        # env -i: the app's size is the pane's, not a COLUMNS or LINES the tmux server inherited; the pane stays
        # open after the app exits, so its last lines can be read
        command = f"cd {tmp_path} && env -i {env} {' '.join(argv)}; echo $? > {self.status}; sleep 600"
        width, height = (str(n) for n in SIZE)
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", width, "-y", height, command], check=True)
        subprocess.run(["tmux", "resize-window", "-t", self.name, "-x", width, "-y", height], check=True)

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def exit_status(self) -> int:
        self.until("the exit status", lambda: self.status.exists() and self.status.read_text().strip() != "")
        return int(self.status.read_text())

    def app_pid(self) -> int:
        shell = subprocess.run(["tmux", "list-panes", "-t", self.name, "-F", "#{pane_pid}"], capture_output=True,
                               text=True, check=True).stdout.split()[0]  # fmt: skip
        child = subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True, check=True).stdout.split()
        return int(child[0])

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78cM])")
PTY_KEYS = {"Enter": "\r", "C-c": "\x03", "Tab": "\t"}


class Pty(Terminal):
    """A pseudo-terminal of the stdlib (``pty.fork``: the app's controlling terminal), where tmux is missing.
    ``text`` is what the app wrote since the last keys, escape sequences taken out: a full-screen app redraws
    what changed, so what a key changed is there whole."""

    def __init__(self, tmp_path: Path, argv: list[str]) -> None:
        import fcntl
        import pty
        import struct
        import termios

        env = {k: v for k, v in environment({"TERM": "xterm-256color"}).items() if k in WANTED}
        pid, fd = pty.fork()
        if pid == 0:  # the child: its terminal's size set before the app reads it
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
                os.chdir(tmp_path)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.written = bytearray()
        self.since = 0
        self.status: int | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the app exited and the terminal closed
                return
            if not chunk:
                return
            self.written += chunk

    def text(self) -> str:
        return ESCAPES.sub("", bytes(self.written[self.since :]).decode("utf-8", "replace"))

    def keys(self, *keys: str) -> None:
        self.since = len(self.written)
        for key in keys:
            os.write(self.fd, PTY_KEYS.get(key, key).encode())
            time.sleep(0.05)

    def exit_status(self) -> int:
        def ended() -> bool:
            if self.status is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = os.waitstatus_to_exitcode(status)
            return self.status is not None

        self.until("the exit status", ended)
        self.reader.join(timeout=10)
        assert self.status is not None
        return self.status

    def app_pid(self) -> int:
        return self.pid

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


TERMINALS = [
    pytest.param(TmuxPane, id="tmux", marks=pytest.mark.skipif(shutil.which("tmux") is None, reason="no tmux")),
    pytest.param(Pty, id="pty", marks=pytest.mark.skipif(sys.platform == "win32", reason="no pty")),
]


@pytest.mark.parametrize("terminal", TERMINALS)
def test_in_a_real_terminal_it_draws_takes_keys_writes_and_exits_0(tmp_path: Path, terminal: type[Terminal]) -> None:
    recorded = record(tmp_path / "r.jsonl", review_lms.student(), [TICKETS[0], TICKETS[ACCOUNT]])
    screen = terminal(tmp_path, review_argv(tmp_path, recorded, "--json"))
    try:
        screen.shows("1 of 2", "Ticket -> Triage -> BillingIssue", "refund_requested", "3 ○ AccountIssue", "accept")
        screen.keys("Enter")
        screen.shows("2 of 2", "accepted 1")
        screen.keys("3")  # AccountIssue
        screen.shows("Triage -> AccountIssue", "action needs a value")
        screen.keys("1", "Enter")  # an action; accept
        screen.shows("All 2 inputs decided")
        screen.keys("q")
        assert screen.exit_status() == 0
        screen.shows('"accepted": 1', '"changed": 1', '"remaining": 0', '"interrupted": false')  # --json at quit
    finally:
        screen.close()
    lines = gold_lines(tmp_path)
    assert [line["review"]["decision"] for line in lines] == ["accepted", "changed"]
    assert lines[1]["trace"][-1]["node"] == "AccountIssue"
    assert lines[1]["trace"][-1]["fields"]["action"] == "reset password"


@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize("how", ["key", "signal"])
def test_in_a_real_terminal_ctrl_c_is_exit_130_and_keeps_what_was_accepted(
    tmp_path: Path, terminal: type[Terminal], how: str
) -> None:
    """Ctrl-C typed (a key to the full-screen app) or SIGINT sent from outside: exit 130, nothing accepted lost."""
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:3])
    screen = terminal(tmp_path, review_argv(tmp_path, recorded))
    try:
        screen.shows("1 of 3")
        screen.keys("Enter")
        screen.shows("2 of 3", "accepted 1")
        if how == "key":
            screen.keys("C-c")
        else:
            os.kill(screen.app_pid(), signal.SIGINT)
        assert screen.exit_status() == INTERRUPTED
        screen.shows("1 accepted", "2 left", "bae: error: interrupted")
    finally:
        screen.close()
    assert [line["trace"] for line in gold_lines(tmp_path)] == [steps(lms.TRACES[0])]


@pytest.mark.parametrize("terminal", TERMINALS)
def test_in_a_real_terminal_a_teacher_that_is_down_is_said_on_screen_and_the_review_goes_on(
    tmp_path: Path, terminal: type[Terminal]
) -> None:
    recorded = record(tmp_path / "r.jsonl", review_lms.confident(), TICKETS[:2])
    screen = terminal(tmp_path, review_argv(tmp_path, recorded, "--suggest", f"{LMS}:down"))
    try:
        screen.shows("1 of 2", "is down, no suggestions")
        screen.keys("Enter")
        screen.shows("2 of 2", "accepted 1", "is down, no suggestions")  # in the header: drawn with each screen
        screen.keys("q")
        assert screen.exit_status() == 0
    finally:
        screen.close()
    assert [line["trace"] for line in gold_lines(tmp_path)] == [steps(lms.TRACES[0])]
