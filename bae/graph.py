"""``Graph``: nodes and edges discovered from type annotations, validated, and run."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeGraphError
from bae.node import Node, NodeSpec, spec_of
from bae.observe import Observer
from bae.resolve import RunState, inject_deps
from bae.result import GraphResult
from bae.run import Run

if TYPE_CHECKING:
    from bae.lm import LM


@dataclass(frozen=True)
class Problem:
    """One thing ``Graph.validate`` found wrong, naming the node (and field) concerned."""

    kind: str
    node: str
    message: str
    field: str | None = None

    def __str__(self) -> str:
        return self.message


class Graph:
    """A graph read from its start node's annotations.

    Construction never raises for a badly annotated node: ``validate()`` reports it,
    and ``run`` refuses to start while any annotation is unresolved.
    """

    def __init__(self, start: type[Node]) -> None:
        if not (isinstance(start, type) and issubclass(start, Node)):
            raise BaeGraphError(f"Graph(start=...) needs a Node subclass, got {start!r}")
        self.start = start
        self.specs: dict[type[Node], NodeSpec] = {}
        queue: deque[type[Node]] = deque([start])
        while queue:
            cls = queue.popleft()
            if cls in self.specs:
                continue
            self.specs[cls] = spec_of(cls)
            queue.extend(self.specs[cls].successors)
        # only unresolved annotations stop a run; the rest of validate() walks the whole graph
        self._unresolved = "; ".join(text for spec in self.specs.values() for text in spec.problems)

    @property
    def nodes(self) -> tuple[type[Node], ...]:
        """Every node class reachable from the start, in discovery order."""
        return tuple(self.specs)

    @property
    def edges(self) -> dict[type[Node], tuple[type[Node], ...]]:
        return {cls: spec.successors for cls, spec in self.specs.items()}

    @property
    def terminal_nodes(self) -> tuple[type[Node], ...]:
        """Nodes where a run may end (``-> None`` or an optional edge)."""
        return tuple(cls for cls, spec in self.specs.items() if spec.may_end)

    def node(self, name: str) -> type[Node] | None:
        """A node class of this graph by name (the by-name lookup artifacts and datasets use)."""
        return next((cls for cls in self.specs if cls.__name__ == name), None)

    def predictor_keys(self) -> list[tuple[str, str]]:
        """Every predictor this graph can use: ``make`` for nodes bae may generate (not the start,
        which the caller gives), ``choice`` for nodes where the LM picks the successor."""
        keys: list[tuple[str, str]] = []
        for cls, spec in self.specs.items():
            if spec.generated and cls is not self.start:
                keys.append((cls.__name__, "make"))
            if spec.decides:
                keys.append((cls.__name__, "choice"))
        return keys

    def validate(self) -> list[Problem]:
        """Everything that would make this graph fail or misbehave at run time."""
        problems = [Problem("annotation", spec.name, text) for spec in self.specs.values() for text in spec.problems]
        problems += self._dead_ends() + self._unsupplied_context() + self._duplicate_binds()
        return problems

    def _dead_ends(self) -> list[Problem]:
        can_end = {cls for cls, spec in self.specs.items() if spec.may_end}
        changed = True
        while changed:
            changed = False
            for cls, spec in self.specs.items():
                if cls not in can_end and any(s in can_end for s in spec.successors):
                    can_end.add(cls)
                    changed = True
        return [
            Problem("no_end", cls.__name__, f"{cls.__name__} has no path to an end: every run through it loops")
            for cls in self.specs
            if cls not in can_end
        ]

    def _ancestors(self, target: type[Node]) -> set[type[Node]]:
        parents: dict[type[Node], set[type[Node]]] = {cls: set() for cls in self.specs}
        for cls, spec in self.specs.items():
            for succ in spec.successors:
                parents[succ].add(cls)
        seen: set[type[Node]] = set()
        queue = deque(parents[target])
        while queue:
            cls = queue.popleft()
            if cls not in seen:
                seen.add(cls)
                queue.extend(parents[cls])
        return seen

    def _unsupplied_context(self) -> list[Problem]:
        bound_types = {b.annotation for spec in self.specs.values() for b in spec.bound}
        problems = []
        for cls, spec in self.specs.items():
            made_by_bae = any(cls in s.successors for s in self.specs.values() if s.routed)
            if cls is self.start or not made_by_bae:
                continue  # the caller, or the custom logic that builds it, supplies these fields
            ancestors = self._ancestors(cls)
            for ctx in spec.context:
                supplied = any(ctx.name in a.model_fields for a in ancestors) or ctx.annotation in bound_types
                if not supplied and ctx.required:
                    problems.append(
                        Problem(
                            "context",
                            cls.__name__,
                            f"{cls.__name__}.{ctx.name} is a Context field no predecessor can supply "
                            f"(no upstream node has a field {ctx.name!r}, no Bind of its type)",
                            ctx.name,
                        )
                    )
        return problems

    def _duplicate_binds(self) -> list[Problem]:
        owners: dict[Any, str] = {}
        problems = []
        for spec in self.specs.values():
            for bound in spec.bound:
                where = f"{spec.name}.{bound.name}"
                if bound.annotation in owners:
                    problems.append(
                        Problem(
                            "bind",
                            spec.name,
                            f"{where} binds type {getattr(bound.annotation, '__name__', bound.annotation)} "
                            f"already bound by {owners[bound.annotation]}: one Bind per type per graph",
                            bound.name,
                        )
                    )
                else:
                    owners[bound.annotation] = where
        return problems

    def to_mermaid(self) -> str:
        lines = ["graph TD"]
        for cls, spec in self.specs.items():
            for succ in spec.successors:
                lines.append(f"    {cls.__name__} --> {succ.__name__}")
            if spec.may_end:
                lines.append(f"    {cls.__name__} --> END([end])")
        return "\n".join(lines)

    def run(
        self,
        start_node: Node,
        lm: LM | None = None,
        max_steps: int = 100,
        observers: Sequence[Observer] = (),
        **deps: Any,
    ) -> GraphResult:
        """Run from ``start_node`` until a node ends the run; services for ``Dep`` come from ``deps``.

        Without ``lm``, a ``DSPyBackend`` on DSPy's configured LM, else on the CLI's default: ``$BAE_LM``,
        else the embedded model. ``observers`` are told what the run does (``bae.observe.Observer``)."""
        if not isinstance(start_node, self.start):
            raise BaeGraphError(f"this graph starts at {self.start.__name__}, got {type(start_node).__name__}")
        if self._unresolved:
            raise BaeGraphError(self._unresolved)
        if lm is None:
            from bae.dspy_backend import DSPyBackend

            lm = DSPyBackend()
        return Run(self, start_node, lm, services=deps, observers=observers, max_steps=max_steps).execute()

    async def arun(
        self,
        start_node: Node,
        lm: LM | None = None,
        max_steps: int = 100,
        observers: Sequence[Observer] = (),
        **deps: Any,
    ) -> GraphResult:
        """``run`` for asyncio code: the run happens in a worker thread, so many can be in flight at once
        while the event loop stays free (LM calls are blocking I/O in DSPy's sync path)."""
        import asyncio

        return await asyncio.to_thread(self.run, start_node, lm, max_steps, observers, **deps)

    def step(self, node: Node, lm: LM, state: RunState) -> Node | None:
        """The node that follows ``node``: from its own logic, or made or chosen by ``lm``; checked
        against its return annotation."""
        spec = self.specs.get(type(node)) or spec_of(type(node))
        if not spec.routed:
            custom: Callable[..., Node | None] = node.__call__  # a subclass's own edges, not the base's None
            following = custom(lm, **inject_deps(node, state))
        elif spec.decides:
            following = lm.decide(node)
        elif spec.successors:
            following = lm.make(node, spec.successors[0])
        else:
            following = None
        if following is not None and type(following) not in spec.successors:
            raise BaeGraphError(
                f"{spec.name} returned {type(following).__name__}, which its return annotation does not "
                f"allow "
                f"(allowed: {', '.join(spec.choices) or 'None'})"
            )
        if following is None and not spec.may_end:
            raise BaeGraphError(f"{spec.name} returned None, but its return annotation does not allow ending")
        return following

