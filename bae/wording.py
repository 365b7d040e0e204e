"""Small pieces of message text that every layer words the same way: counts and unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 trace``, ``2 traces``: a count with its noun in the right number (``plural`` when not ``noun + 's'``)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def unknown_names(given: Iterable[str], known: Iterable[str], what: str = "field") -> list[str]:
    """One phrase per name in ``given`` that is not in ``known``, with the closest known name when one is
    close enough to be a typo: ``unknown field 'bdy' (did you mean 'body'?)``."""
    choices = list(known)
    phrases = []
    for name in given:
        if name in choices:
            continue
        close = difflib.get_close_matches(name, choices, n=1)
        phrases.append(f"unknown {what} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return phrases
