"""bae's exception family.

Every error bae raises on purpose is a ``BaeError``, so callers (and the CLI) can
tell "bae refused this, here is why" apart from a bug. Each class carries the CLI
exit code of its kind, which keeps one convention across every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bae.result import GraphResult


class BaeError(Exception):
    """Base class: a failure bae understands and can explain in one line."""

    exit_code: int = 1

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result: GraphResult | None = None  # a failed run's partial trace and LM calls, set by Graph.run
        if cause is not None:
            self.__cause__ = cause

    @property
    def cause(self) -> BaseException | None:
        return self.__cause__


class BaeInputError(BaeError):
    """Bad input from the user: a graph file, JSON input, a dataset or a flag value."""

    exit_code = 2


class BaeGraphError(BaeInputError):
    """A graph that cannot be built or run as declared (unresolved edges, missing deps)."""


class BaeParseError(BaeError):
    """The LM's answer could not be parsed or validated, even after self-correction."""


class BaeLMError(BaeError):
    """The LM is unavailable or kept failing after bounded retries; ``timed_out`` when its last request ran
    out of time (a server answers that with 504, any other LM failure with 502)."""

    exit_code = 4

    def __init__(self, message: str, *, cause: BaseException | None = None, timed_out: bool = False) -> None:
        super().__init__(message, cause=cause)
        self.timed_out = timed_out


class BaeArtifactError(BaeError):
    """A compiled directory is missing, corrupt, tampered with or incompatible."""

    exit_code = 3


def cause_chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, each once: LM clients wrap each other's errors (DSPy wraps an engine's
    own exception in ``LMUnexpectedError``), so what went wrong is asked of the whole chain."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain
