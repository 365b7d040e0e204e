"""A teacher: another version, or a stronger model, whose answer for each input is shown beside the recorded one.

``--suggest vN`` runs each input through version ``vN`` of ``--compiled`` on the review's LM; ``--suggest
LM`` runs it through the naive graph (no demos: a strong model needs none, and the student's demos are
what is under review) on that LM (any ``--lm`` spec). Its answers are the distillation loop's labels: a
person settles where they and the recorded answers disagree, and ``--auto-accept-agreeing`` writes the
rest.

A teacher that is down (its LM failing after retries) stops being asked at its first such failure;
what it answered until then stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bae.exceptions import BaeInputError, BaeLMError
from bae.executor import Call, Executor
from bae.lm_specs import LMSettings
from bae.loader import LoadedGraph
from bae.optimized_lm import open_version
from bae.recording import trace_steps
from bae.review.items import Answer, ReviewItem
from bae.runner import Outcome, Runner, Runtime, start_runtime

VERSION = re.compile(r"v\d+")


@dataclass
class Teacher:
    """The runtime a teacher answers with, and what its answers are called on screen."""

    label: str
    runtime: Runtime
    max_steps: int = 100

    def suggest(
        self, items: Sequence[ReviewItem], executor: Executor, done: Callable[[], None] | None = None
    ) -> BaeLMError | None:
        """Put the teacher's answer first among each item's alternatives; returns the failure that stopped it
        (its LM down), else None. An input it failed on otherwise shows its error instead of an answer."""
        runner = Runner(self.runtime, (), self.max_steps)

        def answer(item: ReviewItem) -> Outcome:
            outcome = runner.run(item.index, item.start)
            if isinstance(outcome.error, BaeLMError):
                raise outcome.error
            return outcome

        def keep(index: int, outcome: Outcome) -> None:
            items[index].alternatives.insert(0, self.answer_of(outcome))
            if done is not None:
                done()

        try:
            results = executor.map(Call(answer), list(items), keep)
        except BaeLMError as exc:
            return exc
        if results.interrupted:
            raise KeyboardInterrupt
        return None

    def answer_of(self, outcome: Outcome) -> Answer:
        if outcome.result is None:
            message = outcome.error.message if outcome.error is not None else "interrupted"
            return Answer(self.label, None, error=message)
        steps = trace_steps(outcome.result.trace, outcome.result.calls, self.runtime.source.version)
        calls = {position: step["lm"] for position, step in enumerate(steps) if "lm" in step}
        return Answer(self.label, tuple(outcome.result.trace), calls)


def open_teacher(
    spec: str,
    graph: LoadedGraph,
    compiled: Path | None,
    lm: str | None,
    settings: LMSettings,
    max_steps: int = 100,
) -> Teacher:
    """``vN`` (a version of ``compiled``, run on ``lm``) or an LM spec (the naive graph on it)."""
    if VERSION.fullmatch(spec):
        if compiled is None:
            raise BaeInputError(f"--suggest {spec} is a version: give --compiled DIR, the root it is in")
        version = open_version(compiled, graph, version=spec)
        return Teacher(f"teacher {version.name}", start_runtime(version, lm, settings), max_steps)
    runtime = start_runtime(open_version(None, graph), spec, settings)
    return Teacher(f"teacher {runtime.source.lm}", runtime, max_steps)
