"""``bae review``: recorded runs in, gold traces out, in a full-screen terminal app (Textual, the ``review`` extra).

The work happens in ``bae.review`` (inputs, order, decisions, provenance, resume); the app in
``bae_cli.review_app`` draws a session and turns keys into its methods. Textual is imported only here,
when the app is about to start, so no other command pays for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bae.exceptions import BaeInputError
from bae.wording import counted
from bae_cli.app import INTERRUPTED, app
from bae_cli.common import JsonFlag, err, print_json, warn
from bae_cli.lm_options import LmOption, LmTimeoutOption, MaxTokensOption, ResponseFormatOption, lm_settings
from bae_cli.progress import stage_bars

if TYPE_CHECKING:
    from bae.review import ReviewSession, Teacher

ORDER_HELP = (
    "file (as read), uncertain (the least confident answer first: its least confident LM call), or disagree "
    "(answers the teacher or the other versions contradict first)."
)


@app.command("review")
def review(
    graph: Annotated[str, typer.Argument(help="file.py[:Name] or package.module:Name: the graph the traces are of.")],
    inputs: Annotated[
        list[Path],
        typer.Option(
            "--input",
            help="Traces to review (repeat it): bae run/serve --record files, or bae eval --output files (gold "
            "and each version's run side by side).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Gold traces (JSONL, what bae compile --trainset loads): each decision is appended at once; "
            "inputs already in it are skipped, so a review resumes.",
            show_default=False,
        ),
    ],
    order: Annotated[str, typer.Option("--order", help=ORDER_HELP)] = "file",
    suggest: Annotated[
        str | None,
        typer.Option(
            "--suggest",
            help="A teacher whose answer is shown beside each recorded one, taken with one key: vN (a version of "
            "--compiled, run on --lm) or an LM spec (the naive graph on it, e.g. openai/gpt-4o).",
            show_default=False,
        ),
    ] = None,
    auto_accept_agreeing: Annotated[
        bool,
        typer.Option(
            "--auto-accept-agreeing",
            help="Write without asking each input whose answer every other answer (the teacher's, the versions') "
            "agrees with; review the rest.",
        ),
    ] = False,
    compiled: Annotated[Path | None, typer.Option("--compiled", help="Compiled root of the --suggest version.")] = None,
    lm: LmOption = None,
    max_tokens: MaxTokensOption = None,
    lm_timeout: LmTimeoutOption = None,
    response_format: ResponseFormatOption = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Teacher runs in flight.")] = 4,
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=1, help="Stop a teacher's run after this many steps.")
    ] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Review recorded runs of GRAPH one screen each, least confident first, and write the gold traces.

    Keys: Enter accept, 1-9 choose an option of the focused route or field, Tab/arrows move, e edit a
    field, a take the suggestion, s skip, u undo, q quit. Each trace is written as it is accepted (Ctrl-C
    loses none), checked as bae compile loads it, with its provenance. Without a terminal only
    --auto-accept-agreeing works, and an input left for a person is exit 2.
    """
    from bae.loader import load_graph
    from bae.review import ORDERS, GoldFile, ReviewSession, open_teacher, read_inputs

    if order not in ORDERS:
        raise BaeInputError(f"--order {order!r}: use one of {', '.join(ORDERS)}")
    gold = GoldFile(out).check()  # before any work
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if not terminal and not auto_accept_agreeing:
        raise BaeInputError("bae review is a full-screen app: run it in a terminal (or with --auto-accept-agreeing)")
    loaded = load_graph(graph)
    session = ReviewSession.start(loaded.graph, read_inputs(inputs, loaded.graph), gold, order)
    if suggest is not None and not session.done:
        settings = lm_settings(max_tokens, lm_timeout, response_format)
        teacher = open_teacher(suggest, loaded, compiled, lm, settings, max_steps)
        _ask(teacher, session, threads, must=auto_accept_agreeing, quiet=as_json)
        session.reorder(order)
    compared = any(item.alternatives for item in session.queue)
    if (order == "disagree" or auto_accept_agreeing) and not compared and not session.done:
        flag = "--order disagree" if order == "disagree" else "--auto-accept-agreeing"
        raise BaeInputError(f"{flag} compares answers: give --suggest vN or LM, or bae eval --output files")
    if auto_accept_agreeing:
        session.auto_accept_agreeing()
    if not session.done and not terminal:
        left = len(session.queue) - session.position
        if as_json:
            print_json(session.summary())
        need = "needs" if left == 1 else "need"
        raise BaeInputError(
            f"{session.counts.auto_accepted} auto-accepted into {out}; {counted(left, 'trace')} {need} a person: "
            "run bae review in a terminal to review them"
        )
    if not session.done:
        _run_app(session)
    _report(session, as_json)
    if session.interrupted:
        raise typer.Exit(INTERRUPTED)


def _ask(teacher: Teacher, session: ReviewSession, threads: int, must: bool, quiet: bool) -> None:
    """The teacher's answer for every queued input; a teacher that is down is exit 4 when its answers decide
    what is written (``--auto-accept-agreeing``), else said on screen and the review goes on without it."""
    from bae.executor import ThreadExecutor

    queued = session.queue[session.position :]
    with stage_bars(err, transient=quiet) as bars:
        bars.stage(f"asking {teacher.label}", len(queued))
        down = teacher.suggest(queued, ThreadExecutor(threads), bars.advance)
    if down is not None:
        if must:
            raise down
        session.notice = f"{teacher.label} is down, no suggestions: {down.message}"
        warn(session.notice)


def _run_app(session: ReviewSession) -> None:
    try:
        from bae_cli.review_app import ReviewApp
    except ImportError as exc:
        missing = f"({exc.name} missing)"
        raise BaeInputError(f"bae review needs the review extra: pip install 'bae[review]' {missing}") from None
    app = ReviewApp(session)
    try:
        app.run()
    except KeyboardInterrupt:
        session.interrupted = True
    if app.return_value is None:  # ended by a signal (SIGINT from outside), not by q or the Ctrl-C key
        session.interrupted = True


def _report(session: ReviewSession, as_json: bool) -> None:
    summary = session.summary()
    if as_json:
        print_json(summary)
        return
    err.print(
        f"{summary['accepted']} accepted, {summary['changed']} changed, {summary['skipped']} skipped, "
        f"{summary['auto_accepted']} auto-accepted, {summary['remaining']} left; {summary['already_reviewed']} "
        f"reviewed before; gold traces in {summary['out']}",
        markup=False,
        soft_wrap=True,
    )
