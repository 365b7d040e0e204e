"""Closed decisions read from the embedded model's hidden state: which decisions a predictor has, the one
fixed prompt of each, and deciding them at run time from the anchors a compile stored (``bae.anchors``).

A *closed decision* is a choice between successors, or one closed field (a ``Literal``, an ``Enum``, a
``bool``) of a made node, field by field. Its prompt is a plain document in three parts, the layout the
issue-24 study measured best without demos: the task (the predictor's instructions, as its signature
writes them) as a static header evaluated once and cached; the inputs as ``name: value`` lines; the answer
key (``next_step:``, or ``<field> (<description>):``), at whose last token the model is read. No demos: on
the example's training traces the hidden-state methods needed none (centroid routing 0.88 leave-one-out).

A node file's ``decisions`` section holds, per closed decision, the method leave-one-out chose and, for a
hidden-state method, its anchors, tied to the sha256 of the GGUF they were read with and to the prompt's
fingerprint: with another model file, or with any LM but the embedded one, the predictor's demos decide.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bae.anchors import TODAY, Anchors, Query, anchors_from_json, decide
from bae.node import Node, spec_of
from bae.predictors import CHOICE, CHOICE_FIELD, choice_signature, node_to_signature

if TYPE_CHECKING:
    from bae.local.decoding import PrefixCache
    from bae.local.model import LoadedModel

logger = logging.getLogger("bae")

Key = tuple[str, str]


def plain(value: Any) -> Any:
    """A label as JSON stores it: an enum member by its value."""
    return value.value if isinstance(value, enum.Enum) else value


def _options(annotation: Any) -> list[Any] | None:
    """The allowed values of a closed annotation, in declaration order; None for an open one."""
    if annotation is bool:
        return [True, False]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(plain(value), ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ClosedDecision:
    """One closed decision of a predictor and its fixed prompt."""

    node: str
    kind: str
    field: str
    options: list[Any]
    task: str  # the static header: the predictor's instructions
    key: str  # the answer key the model is read at
    inputs: tuple[str, ...]

    def parts(self, inputs: dict[str, Any]) -> tuple[str, str, str]:
        """(header, inputs, key) of the prompt for ``inputs``."""
        lines = "".join(f"{name}: {_text(inputs.get(name, ''))}\n" for name in self.inputs)
        return self.task + "\n\n", lines, self.key

    def fingerprint(self) -> str:
        """What the stored anchors were read under: another prompt makes them meaningless."""
        shape = {"task": self.task, "key": self.key, "inputs": list(self.inputs), "options": self.options}
        return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]


def closed_decisions(cls: type[Node], kind: str) -> list[ClosedDecision]:
    """Every closed decision of ``cls``'s ``kind`` predictor (a make predictor's open fields have none)."""
    spec = spec_of(cls)
    if kind == CHOICE:
        signature = choice_signature(cls)
        inputs = tuple(signature.input_fields)
        return [ClosedDecision(cls.__name__, kind, CHOICE_FIELD, list(spec.choices), signature.instructions,
                               f"{CHOICE_FIELD}:", inputs)]  # fmt: skip
    signature = node_to_signature(cls)
    inputs = tuple(signature.input_fields)
    found = []
    for f in spec.generated:
        options = _options(f.annotation)
        if options is not None:
            key = f"{f.name} ({f.description}):" if f.description else f"{f.name}:"
            found.append(ClosedDecision(cls.__name__, kind, f.name, options, signature.instructions, key, inputs))
    return found


def read(model: LoadedModel, decision: ClosedDecision, inputs: dict[str, Any], cache: PrefixCache | None) -> Any:
    """The model's reading of ``inputs`` under ``decision``'s prompt (the caller holds ``model.lock``)."""
    from bae.local.hidden import read as read_model
    from bae.local.hidden import tokenize

    header, lines, key = decision.parts(inputs)
    parts = [tokenize(model, header, bos=True), tokenize(model, lines), tokenize(model, key)]
    return read_model(model, parts, cache)


@dataclass(frozen=True)
class Decider:
    """One closed decision made from its anchors by ``method``."""

    decision: ClosedDecision
    method: str
    anchors: Anchors


@dataclass(frozen=True)
class NodeDecisions:
    """A predictor's hidden-state decisions as a compile stored them, for one model file."""

    node: str
    kind: str
    model_sha256: str
    deciders: list[Decider]
    covers_all: bool  # every generated field is decided here: no LM call is needed

    def answer(
        self, model: LoadedModel, cache: PrefixCache | None, inputs: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """Each decided field's value for ``inputs``, and the prompt tokens evaluated for them."""
        answers: dict[str, Any] = {}
        tokens = 0
        with model.lock:
            for decider in self.deciders:
                reading = read(model, decider.decision, inputs, cache)
                tokens += reading.tokens
                query = Query(reading.vector.astype("float64"), reading.top_ids, reading.top_logprobs)
                answers[decider.decision.field] = decide(decider.method, decider.anchors, query)
        return answers, tokens


def decisions_section(
    model_sha256: str, chosen: dict[str, tuple[ClosedDecision, str, dict[str, float], dict[str, Any] | None]]
) -> dict[str, Any]:
    """A node file's ``decisions``: per field the method, every candidate's leave-one-out score and, for a
    hidden-state winner, its anchors (``bae.anchors.anchors_json``)."""
    fields = {}
    for name, (decision, method, scores, data) in chosen.items():
        fields[name] = {
            "method": method,
            "loo": scores,
            "prompt": decision.fingerprint(),
            **({"anchors": data} if data else {}),
        }
    return {"model_sha256": model_sha256, "fields": fields}


def node_decisions(cls: type[Node], kind: str, section: dict[str, Any]) -> NodeDecisions | None:
    """The usable hidden-state decisions of a node file's ``decisions`` section (None: none is). A decision
    whose prompt changed since compile is left to the demos, as a stale predictor would be."""
    closed = {d.field: d for d in closed_decisions(cls, kind)}
    deciders = []
    for name, entry in section.get("fields", {}).items():
        decision = closed.get(name)
        if entry.get("method") == TODAY or "anchors" not in entry:
            continue
        if decision is None or entry.get("prompt") != decision.fingerprint():
            logger.warning(
                "%s (%s): %s: its prompt changed since compile: deciding it with demos", cls.__name__, kind, name
            )
            continue
        deciders.append(Decider(decision, entry["method"], anchors_from_json(entry["anchors"])))
    if not deciders:
        return None
    generated = {f.name for f in spec_of(cls).generated} if kind != CHOICE else {CHOICE_FIELD}
    covers = generated == {d.decision.field for d in deciders}
    return NodeDecisions(cls.__name__, kind, str(section["model_sha256"]), deciders, covers)
