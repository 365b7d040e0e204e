"""The trace on a review screen, as the person changes it: what can be changed, and what each change does.

Everything comes from the graph's types. A node bae routes offers its *route* (the successors its return
annotation allows, and ``None`` where it may end the run); a step an LM made offers each field it
generated, a closed one (``Literal``, enum, bool) as its allowed values, an open one as text to edit. The
start node's fields (the input) and steps made by custom logic are shown, not changed; ``Context`` fields
are never changed by hand either: they are copied along the trace, as a run copies them, so they follow
any change upstream.

Changing a route replaces the rest of the trace: the new successor's generated fields are taken from a
suggestion that went there (a teacher's or another version's answer), else from the replaced node's
fields of the same name, and where neither has one the field is *missing* until the person gives it.
A draft is saved only once it builds into a trace the dataset loader accepts (``bae.dataset.parse_trace``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bae.dataset import TraceError, parse_trace
from bae.graph import Graph
from bae.node import Node, closed_values, node_json, spec_of
from bae.review.items import lm_made

ROUTE_END = "None"  # the route option that ends the run at a node that may end


class ReviewError(ValueError):
    """A change the draft cannot take, or a draft that is not a trace yet; the message says why."""


@dataclass(frozen=True)
class Slot:
    """One thing on the screen the person can change: a generated field of the step at ``position``, or
    (``field`` None) the route taken after it."""

    position: int
    field: str | None
    options: tuple[Any, ...] | None  # allowed values as JSON values (route: node names); None: open text

    @property
    def is_route(self) -> bool:
        return self.field is None


@dataclass
class _Step:
    cls: type[Node]
    fields: dict[str, Any]  # JSON values; an LM-made step keeps its generated fields only


@dataclass
class Draft:
    """An editable trace of ``graph``; ``suggestions`` are other answers to take fields and routes from."""

    graph: Graph
    steps: list[_Step]
    suggestions: list[tuple[Node, ...]] = field(default_factory=list)

    @classmethod
    def of(cls, graph: Graph, nodes: Sequence[Node], suggestions: Sequence[Sequence[Node]] = ()) -> Draft:
        steps = []
        for position, node in enumerate(nodes):
            data = node_json(node)
            if lm_made(nodes, position):
                data = {f.name: data[f.name] for f in spec_of(type(node)).generated if f.name in data}
            steps.append(_Step(type(node), data))
        return cls(graph, steps, [tuple(s) for s in suggestions])

    def copy(self) -> Draft:
        return Draft(self.graph, [_Step(s.cls, dict(s.fields)) for s in self.steps], self.suggestions)

    # -- what the screen shows -----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.cls.__name__ for s in self.steps]

    def lm_made(self, position: int) -> bool:
        return position > 0 and spec_of(self.steps[position - 1].cls).routed

    def slots(self) -> list[Slot]:
        """What can be changed, in screen order: each LM-made step's generated fields, then its route."""
        slots: list[Slot] = []
        for position, step in enumerate(self.steps):
            spec = spec_of(step.cls)
            if self.lm_made(position):
                for generated in spec.generated:
                    values = closed_values(generated.annotation)
                    options = None if values is None else tuple(_json_value(v) for v in values)
                    slots.append(Slot(position, generated.name, options))
            if spec.decides:
                slots.append(Slot(position, None, spec.choices))
        return slots

    def value(self, slot: Slot) -> Any:
        """The slot's value now: a field's JSON value (``MISSING`` when not given yet), or the route's
        option (``MISSING`` when the trace stops at a node that cannot end it)."""
        if slot.is_route:
            if slot.position + 1 < len(self.steps):
                return self.steps[slot.position + 1].cls.__name__
            return ROUTE_END if spec_of(self.steps[slot.position].cls).may_end else MISSING
        assert slot.field is not None
        return self.steps[slot.position].fields.get(slot.field, MISSING)

    def missing(self) -> list[Slot]:
        """The slots still waiting for the person (a re-route's new fields, a route to pick)."""
        return [slot for slot in self.slots() if self.value(slot) is MISSING]

    def fields_of(self, position: int) -> dict[str, Any]:
        """Every field of the step as it would be saved (``Context`` fields resolved along the trace)."""
        try:
            return node_json(self._build(position + 1, complete=False)[position])
        except ReviewError:
            return dict(self.steps[position].fields)

    # -- changes -------------------------------------------------------------------------------
    def choose(self, slot: Slot, index: int) -> None:
        """Take option ``index`` (from 0) of a closed field or a route."""
        if slot.options is None:
            raise ReviewError(f"{slot.field} is open text: press e to edit it")
        if not 0 <= index < len(slot.options):
            raise ReviewError(f"no option {index + 1}: {len(slot.options)} here")
        chosen = slot.options[index]
        if slot.is_route:
            self.reroute(slot.position, str(chosen))
        else:
            assert slot.field is not None
            self.steps[slot.position].fields[slot.field] = chosen

    def edit(self, slot: Slot, text: str) -> None:
        """Set a generated field from what the person typed: text as it is for a text field, JSON (or the
        bare word) for any other type, checked against the field's type."""
        if slot.is_route or slot.field is None:
            raise ReviewError("a route is chosen with its number, not typed")
        annotation = self.steps[slot.position].cls.model_fields[slot.field].annotation
        value: Any = text
        if annotation is not str:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
        self.steps[slot.position].fields[slot.field] = _checked(annotation, value, slot.field)

    def reroute(self, position: int, name: str) -> None:
        """Make ``name`` follow the node at ``position`` (``None``: end there); the rest of the trace is made
        anew from the suggestions and the replaced step's fields, then continued as far as the graph's
        types allow without the person."""
        spec = spec_of(self.steps[position].cls)
        if name == ROUTE_END:
            if not spec.may_end:
                raise ReviewError(f"{spec.name} cannot end the run")
            del self.steps[position + 1 :]
            return
        target = spec.successor(name)
        if target is None:
            raise ReviewError(f"{spec.name} cannot go to {name}")
        replaced = self.steps[position + 1] if position + 1 < len(self.steps) else None
        if replaced is not None and replaced.cls is target:
            return
        del self.steps[position + 1 :]
        self.steps.append(_Step(target, self._prefill(position + 1, target, replaced)))
        self._continue()

    def _prefill(self, position: int, target: type[Node], replaced: _Step | None) -> dict[str, Any]:
        """A new step's generated fields: a suggestion's for the same node at the same place first, then the
        replaced node's fields of the same name (where the value fits the new field's type)."""
        fields: dict[str, Any] = {}
        sources = [node_json(s[position]) for s in self.suggestions if self._follows(s, position, target)]
        if replaced is not None:
            sources.append(replaced.fields)
        for generated in spec_of(target).generated:
            for source in sources:
                if generated.name in source:
                    try:
                        fields[generated.name] = _checked(generated.annotation, source[generated.name], "")
                        break
                    except ReviewError:
                        continue
        return fields

    def _follows(self, suggestion: tuple[Node, ...], position: int, target: type[Node]) -> bool:
        """Whether a suggestion took this draft's path up to ``position``, where it has ``target``."""
        names = [type(n).__name__ for n in suggestion[:position]]
        return len(suggestion) > position and type(suggestion[position]) is target and names == self.names[:position]

    def _continue(self) -> None:
        """Extend the trace while its last node can neither end it nor leave the choice to the person: a node
        with one successor gets it (fields prefilled), one routed by code gets a suggestion's continuation."""
        while True:
            last = self.steps[-1]
            spec = spec_of(last.cls)
            if spec.may_end or spec.decides:
                return
            position = len(self.steps)
            if spec.routed and len(spec.successors) == 1:
                target = spec.successors[0]
                self.steps.append(_Step(target, self._prefill(position, target, None)))
                continue
            following = next(
                (s for s in self.suggestions if len(s) > position and self._follows(s, position, type(s[position]))),
                None,
            )
            if following is None:
                return  # the person cannot make what code makes: build() says so
            node = following[position]
            data = node_json(node)
            if spec.routed:
                data = {f.name: data[f.name] for f in spec_of(type(node)).generated if f.name in data}
            self.steps.append(_Step(type(node), data))

    # -- the result ----------------------------------------------------------------------------
    def build(self) -> tuple[Node, ...]:
        """The draft as a trace, checked by the dataset loader; ``ReviewError`` says what is missing."""
        waiting = self.missing()
        if waiting:
            first = waiting[0]
            what = "the step after it" if first.is_route else first.field
            raise ReviewError(f"{self.names[first.position]}: {what} needs a value (choose or edit it)")
        return self._build(len(self.steps))

    def _build(self, length: int, complete: bool = True) -> tuple[Node, ...]:
        record = {"trace": [{"node": s.cls.__name__, "fields": s.fields} for s in self.steps[:length]]}
        try:
            return parse_trace(self.graph, record, complete)
        except TraceError as exc:
            last = spec_of(self.steps[length - 1].cls)
            code = not last.routed and not last.may_end
            hint = f": {last.name} is routed by its own code; give --suggest to continue the trace" if code else ""
            raise ReviewError(f"{exc}{hint}") from None


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _json_value(value: Any) -> Any:
    return TypeAdapter(type(value)).dump_python(value, mode="json")


def _checked(annotation: Any, value: Any, name: str) -> Any:
    """``value`` validated as ``annotation``, as JSON; a value of the wrong type is a ``ReviewError``."""
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    try:
        return adapter.dump_python(adapter.validate_python(value), mode="json")
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ReviewError(f"{name}: {reason}" if name else reason) from None
