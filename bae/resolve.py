"""How values flow along a run: ``Context`` inputs by name, ``Dep`` services by type.

One implementation serves ``Graph.run``, the LM backends and the compiler's
``bae.examples``, so training examples see exactly the inputs a run would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bae.exceptions import BaeGraphError
from bae.node import Node, spec_of


@dataclass
class RunState:
    """What values can flow from: the trace so far, its ``Bind`` exports, and the run's services."""

    trace: list[Node] = field(default_factory=list)
    binds: dict[Any, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Node) -> RunState:
        """A one-node state: where ``lm.make`` called outside a run resolves its inputs."""
        state = cls()
        state.append(node)
        return state

    def append(self, node: Node) -> None:
        self.trace.append(node)
        for bound in spec_of(type(node)).bound:
            self.binds[bound.annotation] = getattr(node, bound.name)


def _bound_value(annotation: Any, binds: dict[Any, Any]) -> tuple[bool, Any]:
    if annotation in binds:
        return True, binds[annotation]
    if isinstance(annotation, type):
        for value in reversed(list(binds.values())):
            if isinstance(value, annotation):
                return True, value
    return False, None


def context_inputs(target: type[Node], previous: Node, state: RunState, strict: bool = True) -> dict[str, Any]:
    """The values of ``target``'s ``Context`` fields, resolved the way a run resolves them.

    By name from ``previous``, else from the most recent node in the trace with that
    field, else from a ``Bind`` value of the field's type. A field nobody supplies
    keeps its default, or is an error naming the field (left out when not ``strict``).
    """
    values: dict[str, Any] = {}
    for ctx in spec_of(target).context:
        for source in (previous, *reversed(state.trace)):
            if ctx.name in type(source).model_fields:
                values[ctx.name] = getattr(source, ctx.name)
                break
        else:
            found, value = _bound_value(ctx.annotation, state.binds)
            if found:
                values[ctx.name] = value
            elif ctx.required and strict:
                raise BaeGraphError(
                    f"cannot fill Context field {target.__name__}.{ctx.name}: no upstream node has a field "
                    f"{ctx.name!r} and no Bind provides {getattr(ctx.annotation, '__name__', ctx.annotation)}"
                )
    return values


def visible_state(node: Node) -> dict[str, Any]:
    """The node's LM-visible fields (everything but ``Bind``), as a choice predictor's inputs."""
    return {f.name: getattr(node, f.name) for f in spec_of(type(node)).visible}


def inject_deps(node: Node, state: RunState) -> dict[str, Any]:
    """Services for ``node``'s ``Dep`` parameters: run services by type, then ``Bind`` values."""
    kwargs: dict[str, Any] = {}
    for dep in spec_of(type(node)).deps:
        by_type = [
            (name, svc)
            for name, svc in state.services.items()
            if isinstance(dep.annotation, type) and isinstance(svc, dep.annotation)
        ]
        if by_type:
            kwargs[dep.name] = dict(by_type).get(dep.name, by_type[0][1])
            continue
        found, value = _bound_value(dep.annotation, state.binds)
        if not found:
            type_name = getattr(dep.annotation, "__name__", repr(dep.annotation))
            raise BaeGraphError(
                f"{type(node).__name__}.__call__ needs {dep.name}: {type_name}, but no service of that "
                f"type was "
                f"passed to Graph.run and no Bind field provides one"
            )
        kwargs[dep.name] = value
    return kwargs
