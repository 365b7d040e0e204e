"""Small pieces of message text that every layer words the same way: counts, unknown names and scores.

Scores are written to one precision wherever people read them (every command's tables and lines, gate
messages, a bundle's README), so the same figure never reads two ways; JSON output, manifests and
``versions.json`` keep the full values."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

SCORE_DECIMALS = 3


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


def score_text(value: object) -> str:
    """``0.5238`` -> ``0.524``; ``-`` where there is no score (the naive graph's recorded one, a predictor
    left naive) or, from a hand-edited manifest, something that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{SCORE_DECIMALS}f}"


def score_change_text(change: float) -> str:
    """A difference of scores, signed: ``+0.095``, ``-0.048``."""
    return f"{change:+.{SCORE_DECIMALS}f}"
