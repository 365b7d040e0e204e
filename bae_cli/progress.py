"""Progress displays on stderr: stages of long work (compile, eval), and the steps of one slow run.

Both draw only on a terminal and leave nothing behind (a log or a pipe gets no spinner frames), and
both keep stdout clean for ``--json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bae.observe import Observer

if TYPE_CHECKING:
    from rich.console import Console

    from bae.node import Node
    from bae.result import CallRecord, GraphResult
    from bae.run import Run


class RichProgress:
    """A command's stages as Rich progress bars on stderr, so stdout stays clean for --json.

    The display starts with the first stage, so an input error found before any work (a bad
    dataset line, a bad flag value) stays the only line on stderr; a new stage fills the last bar.
    """

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: int | None = None

    def stage(self, name: str, total: int, completed: int = 0) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total)
        self.task = self.progress.add_task(name, total=total, completed=completed)

    def advance(self) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def stop(self) -> None:
        """End the display; one that never started prints nothing (not even a blank line)."""
        if self.task is not None:
            self.progress.stop()


@contextmanager
def stage_bars(console: Console, transient: bool) -> Iterator[RichProgress]:
    """Progress bars for a command's stages on ``console``, ended whichever way the command ends; with
    ``transient`` (``--json``) they vanish when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    display = RichProgress(Progress(*columns, console=console, transient=transient))
    try:
        yield display
    finally:
        display.stop()


class RunProgress(Observer):
    """One run's steps as a spinner line on a terminal: which node is being routed and for how long, and how
    long the last LM call took. A run on the embedded model on a busy machine can take a minute; this says
    it is alive and where."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Any = None
        self.last = ""

    def run_started(self, run: Run) -> None:
        self.status = self.console.status(f"{type(run.start).__name__}: starting")
        self.status.start()

    def step_started(self, run: Run, node: Node) -> None:
        self.status.update(f"{' -> '.join(type(n).__name__ for n in run.trace)}: routing{self.last}")

    def lm_called(self, run: Run, call: CallRecord) -> None:
        self.last = f" (last LM call: {call.node}.{call.kind}, {call.latency_s:.1f} s)"
        self.status.update(f"{' -> '.join(type(n).__name__ for n in run.trace)}: routing{self.last}")

    def run_ended(self, run: Run, result: GraphResult | None, error: BaseException | None) -> None:
        if self.status is not None:
            self.status.stop()
