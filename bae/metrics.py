"""How a made node is judged against gold: one metric, in DSPy's form, for training and every score.

A metric is ``metric(example, prediction, trace=None) -> float | bool``, the form DSPy's optimizers
take: ``example`` is the gold step as a ``dspy.Example`` (the node's context fields as inputs, its
generated fields as labels), ``prediction`` what the LM made, as a ``dspy.Prediction``. A user's
metric (``--metric module:function``) replaces the built-in one everywhere: in the optimizer, in the
whole-graph score compile records for dev, in ``bae eval`` and in its gates, so a version is chosen,
recorded and gated by one judgment. It must answer a number from 0 to 1 (or a bool); anything else,
or an exception, is an error naming it, never a silent 0. Which successor a node chose is not a
metric's call: a choice is right or wrong (the optimizer also hands a user's metric the choice
predictors' examples, whose one label is ``next_step``).

The built-in metric is the mean per-field match, each field judged by its declared type. Labels
(``Literal``, enums, bools), numbers and structures match exactly (label text ignoring case, spaces
and punctuation): they are what downstream code branches on. Open text (a field typed plain
``str``) earns token-overlap F1, whatever its length: a one-sentence summary that says the gold
thing in other words earns part of the credit, where exact wording rarely repeats.
"""

from __future__ import annotations

import math
import numbers
import re
import string
import types
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from bae.exceptions import BaeInputError
from bae.node import Node, spec_of

Metric = Callable[..., float | bool]
BUILTIN = "default_metric"  # the built-in metric's name in manifests, as the optimizer has always recorded it
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


def is_open_text(annotation: Any) -> bool:
    """A plain ``str`` field (``str | None`` too): open text, not a label chosen from a fixed set."""
    if get_origin(annotation) is Annotated:
        return is_open_text(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return len(options) == 1 and is_open_text(options[0])
    return isinstance(annotation, type) and issubclass(annotation, str) and not issubclass(annotation, Enum)


def text_fields(cls: type[Node]) -> frozenset[str]:
    """The generated fields of ``cls`` that are open text (token F1); the rest match exactly."""
    return frozenset(f.name for f in spec_of(cls).generated if is_open_text(f.annotation))


def field_match(gold: Any, predicted: Any, text: bool = False) -> float:
    """1.0 for a match, 0.0 for a miss; token F1 when the field is open ``text``."""
    if isinstance(gold, BaseModel):
        gold = gold.model_dump()
    if isinstance(predicted, BaseModel):
        predicted = predicted.model_dump()
    if isinstance(gold, str) and isinstance(predicted, str):
        return _f1(gold, predicted) if text else float(normalize(gold) == normalize(predicted))
    if isinstance(gold, bool) or isinstance(predicted, bool):
        return float(gold is predicted)
    return float(gold == predicted)


def fields_score(gold: Mapping[str, Any], predicted: Mapping[str, Any], text: frozenset[str] = frozenset()) -> float:
    """Mean per-field match over the gold fields (1.0 when there is nothing to match); fields named
    in ``text`` are open text."""
    if not gold:
        return 1.0
    return sum(field_match(value, predicted.get(name), name in text) for name, value in gold.items()) / len(gold)


def builtin_metric(text: frozenset[str] = frozenset()) -> Metric:
    """The built-in metric for a predictor whose open-text fields are ``text``, in DSPy's form:
    all-or-nothing while an optimizer bootstraps (``trace`` given), the mean match otherwise."""

    def default_metric(example: Any, prediction: Any, trace: Any = None, *_: Any) -> float | bool:
        gold = {name: example[name] for name in example.labels()}
        predicted = {name: getattr(prediction, name, None) for name in gold}
        score = fields_score(gold, predicted, text)
        return score >= 1.0 if trace is not None else score

    return default_metric


def metric_name(metric: Metric | None) -> str:
    """What the manifest records: the function's name (``None`` is the built-in metric)."""
    return BUILTIN if metric is None else getattr(metric, "__qualname__", type(metric).__name__)


def metric_for(cls: type[Node], metric: Metric | None) -> Metric:
    """The metric that judges what ``cls``'s predictors make: the user's, or the built-in one for its fields."""
    return metric if metric is not None else builtin_metric(text_fields(cls))


def made_score(metric: Metric | None, gold: Node, made: Node) -> float:
    """How well ``made`` matches ``gold`` in the fields the LM generated, by ``metric`` (None: built-in).

    Raises ``BaeInputError`` naming the metric when it raises or answers anything but a number
    from 0 to 1 or a bool.
    """
    spec = spec_of(type(gold))
    want = {f.name: getattr(gold, f.name) for f in spec.generated}
    got = {f.name: getattr(made, f.name, None) for f in spec.generated}
    if metric is None:
        return fields_score(want, got, text_fields(type(gold)))
    import dspy

    inputs = {f.name: getattr(gold, f.name) for f in spec.context}
    example = dspy.Example(**inputs, **want).with_inputs(*inputs)
    where = f"metric {metric_name(metric)!r} (judging {spec.name})"
    try:
        value = metric(example, dspy.Prediction(**got))
    except Exception as exc:
        raise BaeInputError(f"{where} raised {type(exc).__name__}: {exc}: fix the metric") from exc
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real) and not math.isnan(value) and 0 <= value <= 1:
        return float(value)
    raise BaeInputError(f"{where} returned {value!r}: a metric must return a number from 0 to 1 or a bool")


def check_metric(metric: Metric | None, nodes: Iterable[Node]) -> None:
    """Judge the first made node in ``nodes`` against itself, so a broken metric fails before any LM call."""
    if metric is None:
        return
    node = next((n for n in nodes if spec_of(type(n)).generated), None)
    if node is not None:
        made_score(metric, node, node)
