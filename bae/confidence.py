"""How sure the LM was of a closed answer, read from the log-probabilities its engine reports.

A step's *confidence* is the model's probability of the closed value it gave: a choice between
successors, a ``Literal``, enum or bool field (``bae.node.closed_values``); where a call answers several
closed fields, the least probable one (the weakest decision in the step decides where a reviewer looks
first). Open text has none: a probability of a sentence says little about whether it is right.

Every engine reports it the same way, through DSPy's engine contract: a ``Response`` whose ``logprobs``
are token log-probabilities covering the answer text. bae asks for them on each call (``logprobs``), so

* a LiteLLM model that returns logprobs (OpenAI, vLLM, Gemini...) gives the probability of the value's
  tokens: the sum of their log-probabilities, exponentiated;
* the embedded engine (``bae.local``), which chooses a closed answer by scoring each allowed value,
  reports each chosen value as one piece whose log-probability is that value's share of a softmax over
  the allowed values' scores (calibrated scores where the choice was calibrated), the other values as
  its alternatives; the JSON around the values, which the method fixes, has log-probability 0;
* ``bae.testing.ScriptedLM`` scripts a confidence the same way, so tests take the real path.

A model that returns no logprobs, or an answer in which a closed value cannot be found, has no
confidence (None). The numbers are probabilities in [0, 1], so decisions compare across predictors.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Collection, Mapping
from typing import Any

import dspy
from dspy.lm15 import TokenLogprob, TopLogprob

from bae.node import closed_values

LOGPROBS = {"logprobs": True}  # what a call asks DSPy for (its engine sees ``config.logprobs``)
_DECODER = json.JSONDecoder()
_FLOOR = 1e-12  # a probability of 0 is written as this: log(0) is no number


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Where each top-level field's value sits in a JSON object answer, as character offsets; ``{}``
    when the text holds no JSON object (a fenced or prefixed object is found after its first ``{``)."""
    at = text.find("{")
    spans: dict[str, tuple[int, int]] = {}
    if at < 0:
        return spans
    at = _skip(text, at + 1)
    try:
        while at < len(text) and text[at] != "}":
            name, at = _DECODER.raw_decode(text, at)
            at = _skip(text, at)
            if text[at] != ":":
                return {}
            start = _skip(text, at + 1)
            _, end = _DECODER.raw_decode(text, start)
            if isinstance(name, str):
                spans[name] = (start, end)
            at = _skip(text, end)
            if at < len(text) and text[at] == ",":
                at = _skip(text, at + 1)
    except (ValueError, IndexError):
        return {}
    return spans


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def answer_logprobs(text: str, odds: Mapping[str, float | Mapping[str, float]]) -> tuple[TokenLogprob, ...]:
    """An engine's ``Response.logprobs`` for an answer whose closed values it knows the odds of.

    ``odds`` maps a field to its chosen value's probability, or to the probability of each allowed
    value (as JSON text, the way the answer writes it), from which the chosen one is read and the rest
    become its alternatives. The pieces cover ``text`` exactly, so any reader finds the values."""
    spans = sorted((span, name) for name, span in value_spans(text).items() if name in odds)
    pieces: list[TokenLogprob] = []
    at = 0
    for (start, end), name in spans:
        if start > at:
            pieces.append(TokenLogprob(token=text[at:start], logprob=0.0))
        value, given = text[start:end], odds[name]
        if isinstance(given, Mapping):
            chosen = float(given.get(value, 0.0))
            top = tuple(TopLogprob(token=option, logprob=_log(p)) for option, p in given.items() if option)
        else:
            chosen, top = float(given), ()
        pieces.append(TokenLogprob(token=value, logprob=_log(chosen), top=top))
        at = end
    if at < len(text):
        pieces.append(TokenLogprob(token=text[at:], logprob=0.0))
    return tuple(pieces)


def _log(probability: float) -> float:
    return math.log(min(1.0, max(probability, _FLOOR)))


def confidence(logprobs: Any, closed: Collection[str]) -> float | None:
    """The probability of the least probable of the ``closed`` fields' values in an answer, from DSPy's
    ``prediction.logprobs`` (``{"content": [{"token", "logprob"}, ...]}``); None when there is none."""
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not content or not closed:
        return None
    try:
        tokens = [(str(entry["token"]), float(entry["logprob"])) for entry in content]
    except (KeyError, TypeError, ValueError):
        return None
    spans = value_spans("".join(token for token, _ in tokens))
    found = []
    for name in closed:
        if name not in spans:
            continue
        start, end = spans[name]
        total, at = 0.0, 0
        for token, logprob in tokens:
            if at < end and at + len(token) > start:  # the token overlaps the value
                total += logprob
            at += len(token)
        found.append(math.exp(total))
    if not found:
        return None
    least = min(found)
    return least if math.isfinite(least) else None


@functools.lru_cache(maxsize=4096)
def closed_outputs(signature: type[dspy.Signature]) -> tuple[str, ...]:
    """A signature's output fields whose values are closed (a choice's ``next_step``, literals, enums, bools)."""
    return tuple(name for name, info in signature.output_fields.items() if closed_values(info.annotation) is not None)
