"""How an answer is scored against gold: per field, by the field's type.

Choices are exact matches. Made nodes score the mean of per-field matches: exact for
enums, literals, bools and numbers; case-, space- and punctuation-insensitive for
short text; token-overlap F1 for long text, where exact wording rarely repeats.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

LONG_TEXT_WORDS = 12
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _f1(gold: str, predicted: str) -> float:
    g, p = normalize(gold).split(), normalize(predicted).split()
    common = sum((Counter(g) & Counter(p)).values())
    if not g or not p or not common:
        return float(g == p)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def field_match(gold: Any, predicted: Any) -> float:
    """1.0 for a match, 0.0 for a miss; partial credit only for long text."""
    if isinstance(gold, BaseModel):
        gold = gold.model_dump()
    if isinstance(predicted, BaseModel):
        predicted = predicted.model_dump()
    if isinstance(gold, str) and isinstance(predicted, str):
        if len(gold.split()) >= LONG_TEXT_WORDS:
            return _f1(gold, predicted)
        return float(normalize(gold) == normalize(predicted))
    if isinstance(gold, bool) or isinstance(predicted, bool):
        return float(gold is predicted)
    if isinstance(gold, int | float) and isinstance(predicted, int | float):
        return float(gold == predicted)
    return float(gold == predicted)


def fields_score(gold: Mapping[str, Any], predicted: Mapping[str, Any]) -> float:
    """Mean per-field match over the gold fields (1.0 when there is nothing to match)."""
    if not gold:
        return 1.0
    return sum(field_match(value, predicted.get(name)) for name, value in gold.items()) / len(gold)
